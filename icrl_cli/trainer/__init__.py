"""The trainer: pure algorithm math, log-probs, and the RL loop."""

"""Generation backends behind one protocol: token ids in, token ids and log-probs out."""

from icrl_cli.generation.base import Generation, GenerationBackend

__all__ = ["Generation", "GenerationBackend"]

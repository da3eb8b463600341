"""icrl: train one model to be a solver and a critic, and to internalise the critic's help."""

__version__ = "0.1.0"

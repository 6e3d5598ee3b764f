"""lth-sweep: lottery-ticket (iterative magnitude pruning) experiments and sweeps."""

__version__ = "0.1.0"

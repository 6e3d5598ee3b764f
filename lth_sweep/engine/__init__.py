"""The engine: datasets, models, pruning, stacked populations, optimizers, one round of training and the
whole IMP schedule. Imports neither Ray nor W&B (a GPU box used for benchmarks may have only torch)."""

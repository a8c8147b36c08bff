"""Training data: the synthetic corpus generator, loaders for the real corpora, the feature cache
and the PyTorch dataset over it."""

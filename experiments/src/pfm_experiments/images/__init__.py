"""Conditional image generation (the paper's MNIST experiment): data, models, metrics and the experiment."""

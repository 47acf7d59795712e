"""Experiments, one file each: a reference model, an annotator, metrics and a ``run`` that returns results."""

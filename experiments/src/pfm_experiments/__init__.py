"""The paper's experiments (distribution ``pfm-experiments``), written on pfm's public API only.

One subpackage or module each (:mod:`.toy2d`, :mod:`.images`, :mod:`.text`, :mod:`.control`): a reference model, an
annotator, metrics and a ``reproduce`` that writes results. ``pfm reproduce NAME`` finds them through the
``pfm.experiments`` entry points, declared in :mod:`pfm_experiments.cli`.
"""

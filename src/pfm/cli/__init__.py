"""The ``pfm`` command: the parser and its one-line errors (:mod:`pfm.cli.parser`), the options made from the config
dataclasses (:mod:`pfm.cli.options`), what ``fit``, ``apply``, ``info`` and ``demo`` do (:mod:`pfm.cli.commands`),
``apply`` on text rows and ``train-decoder`` (:mod:`pfm.cli.text`), and ``reproduce``, which finds the experiments by
entry point (:mod:`pfm.cli.reproduce`)."""

from .options import DECAY, NONNEG, NONNEG_INT, POSITIVE, POSITIVE_INT
from .parser import build_parser, main
from .reproduce import experiments

__all__ = ["main", "build_parser", "experiments", "POSITIVE_INT", "NONNEG_INT", "POSITIVE", "NONNEG", "DECAY"]

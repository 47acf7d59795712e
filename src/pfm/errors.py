"""Exceptions raised by pfm.

Every error a user can cause by passing bad input derives from :class:`PFMError`, so a caller (and the CLI) can catch
them apart from bugs. They also derive from the built-in type a Python user would expect (``ValueError``,
``TypeError``, ``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class PFMError(Exception):
    """Base class of the errors pfm raises on bad input."""


class InvalidInputError(PFMError, ValueError):
    """An argument has the wrong shape, length or values (NaN/inf, empty)."""


class NonFiniteLossError(InvalidInputError):
    """A training loss (or a validation value) became NaN or infinite; the message names the step."""


class InvalidTypeError(PFMError, TypeError):
    """An argument has the wrong type or dtype."""


class FileFormatError(PFMError, ValueError):
    """A file or directory is not what it should be: unreadable, corrupt, of another format, or written for another
    model or run (a data file, a checkpoint, a codec, a JSON file)."""


class FlowFileError(FileFormatError):
    """A saved flow (or flow chain) is not what it should be: not a flow, corrupt, or written for another model."""


class MissingFileError(PFMError, FileNotFoundError):
    """A path that must exist does not."""


class NoSpaceError(PFMError, OSError):
    """A write ran out of disk space or quota; the file or directory it was replacing is unchanged."""


class NonFiniteOutputError(PFMError, ArithmeticError):
    """A computation on valid input produced NaN or infinite values (a diverging solve, a broken field)."""


class MissingDependencyError(PFMError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


class ExperimentsNotInstalledError(MissingDependencyError):
    """``pfm reproduce NAME`` was asked for an experiment, and the package of the experiments is not installed."""

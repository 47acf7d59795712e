"""Deprecated: the old home of the experiments, kept for one release.

The experiments moved to their own package, ``pfm_experiments`` (``pip install -e experiments`` in the repository,
or ``pip install pfm-experiments``); the demo and the text codec moved into the library. Importing an old path
(``pfm.tasks.toy2d``, ``pfm.tasks.control.experiment``, ``pfm.tasks.gaussian``, ``pfm.tasks.text.codec``, ...) warns
with a :class:`DeprecationWarning` and gives the module at its new path: the same module object, not a copy.
This is the only module of the library that names the experiments' package, and it imports it only when asked.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings

_OLD = __name__ + "."
# what moved into the library; everything else under pfm.tasks moved to pfm_experiments
_LIBRARY = {"gaussian": "pfm.demo", "text.codec": "pfm.text.codec", "text.encoder": "pfm.text.encoder",
            "text.fetch": "pfm.text.fetch", "text.lm": "pfm.text.lm"}
_EXPERIMENTS = "pfm_experiments"
_INSTALL = "pip install -e experiments (in the repository) or pip install pfm-experiments"


def new_name(old: str) -> str:
    """The module that ``pfm.tasks.<rest>`` is now."""
    rest = old[len(_OLD):]
    return _LIBRARY.get(rest) or f"{_EXPERIMENTS}.{rest}"


class _Alias(importlib.abc.Loader):
    def __init__(self, module) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec):
        return self.module

    def exec_module(self, module) -> None:
        module.__spec__ = self.spec  # the import system set the old name's spec on it; the module keeps its own


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(_OLD):
            return None
        new = new_name(fullname)
        warnings.warn(f"{fullname} is deprecated and will be removed in the next release; import {new}",
                      DeprecationWarning, stacklevel=2)
        try:
            module = importlib.import_module(new)
        except ModuleNotFoundError as exc:
            if fullname == _OLD + "text" and exc.name and exc.name.startswith(_EXPERIMENTS):
                module = importlib.import_module("pfm.text")  # pfm.tasks.text.codec works without the experiments
            elif exc.name and exc.name.startswith(_EXPERIMENTS):
                raise ModuleNotFoundError(f"{fullname} moved to {new}, in the experiments' package, which is not "
                                          f"installed: {_INSTALL}", name=fullname) from None
            else:
                raise
        return importlib.machinery.ModuleSpec(fullname, _Alias(module), is_package=hasattr(module, "__path__"))


if not any(isinstance(f, _Finder) for f in sys.meta_path):
    sys.meta_path.insert(0, _Finder())

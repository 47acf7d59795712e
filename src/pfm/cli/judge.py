"""``--judge MODULE:FUNCTION``: the user's scoring function for ``pfm apply --strength auto``, imported by name."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from ..errors import InvalidInputError, MissingFileError


def load_judge(spec: str, flag: str = "--judge") -> Callable:
    """The callable ``FUNCTION`` of ``MODULE:FUNCTION``, where ``MODULE`` is an importable module (``mypkg.judges``)
    or a Python file (``judge.py``, ``path/to/judge.py``). Importing runs the module's code, as ``python -m`` would."""
    module, sep, name = str(spec).rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise InvalidInputError(f"{flag} must be MODULE:FUNCTION (e.g. judge.py:score or mypkg.judges:score), got "
                                f"{spec!r}")
    try:
        if module.endswith(".py") or "/" in module or "\\" in module:
            path = Path(module)
            if not path.is_file():
                raise MissingFileError(f"{flag}: no such file: {module!r}")
            loaded = importlib.util.spec_from_file_location(f"pfm_judge_{path.stem}", path)
            if loaded is None or loaded.loader is None:
                raise InvalidInputError(f"{flag}: {module!r} cannot be imported as Python")
            mod = importlib.util.module_from_spec(loaded)
            sys.modules[loaded.name] = mod
            wrote = sys.dont_write_bytecode
            sys.dont_write_bytecode = True  # no __pycache__ beside the user's file: nothing of theirs is touched
            try:
                loaded.loader.exec_module(mod)
            finally:
                sys.dont_write_bytecode = wrote
        else:
            mod = importlib.import_module(module)
    except (InvalidInputError, MissingFileError):
        raise
    except ModuleNotFoundError as exc:
        raise InvalidInputError(f"{flag}: no module {module!r} ({exc}); name an importable module or a .py file")\
            from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while importing: say so in one line
        raise InvalidInputError(f"{flag}: importing {module!r} failed: {type(exc).__name__}: {exc}") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise InvalidInputError(f"{flag}: {module!r} has no {name!r}")
    if not callable(fn):
        raise InvalidInputError(f"{flag}: {module}:{name} is a {type(fn).__name__}, not a function")
    return fn

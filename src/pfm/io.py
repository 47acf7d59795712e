"""Writing files safely: the public, stable home of the helpers pfm itself writes with.

A reader never sees a half-written file or directory, and a crash mid-write keeps the old one:

- :func:`atomic_file` ``(path, mode="wb")``: a context manager yielding an open file; on success it replaces
  ``path`` in one step (``os.replace``), on an error it leaves ``path`` as it was.
- :func:`atomic_dir` ``(path)``: a context manager yielding a fresh temporary directory beside ``path``; on success
  it takes the place of ``path`` in one step (an old directory there is swapped out, then removed).
- :func:`check_output` ``(path, name, kind=..., inputs=..., suffixes=...)``: before any work starts, check that
  ``path`` can be written without destroying an input; raises :class:`pfm.InvalidInputError` naming ``name``.
- :func:`check_regular_file` ``(path, what, error=FileFormatError)``: ``path`` checked to be a regular file before
  anything opens it (a named pipe would block the reader forever, a directory or device fail obscurely).
- :func:`read_json` ``(path, error=FileFormatError)``: a JSON file, or ``error`` saying what is wrong with it.

These names are public: they keep their signatures within a major version (the experiments in ``pfm-experiments``
write with them).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import sys
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Sequence


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def check_regular_file(path: str | os.PathLike, what: str = "file", error: Optional[type] = None) -> Path:
    """``path`` as a :class:`~pathlib.Path`, checked to be a regular file (symbolic links followed) before anything
    opens it: opening a named pipe blocks until a writer comes, a device or a directory fails obscurely. A missing
    path is a :class:`pfm.errors.MissingFileError`; anything else that is not a regular file, or cannot be looked
    at, raises ``error`` (default :class:`pfm.errors.FileFormatError`) naming the path and what it is."""
    from .errors import FileFormatError, MissingFileError

    p = Path(path)
    error = error or FileFormatError
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise MissingFileError(f"no such {what}: {str(p)!r}") from None
    except OSError as exc:
        raise error(f"{what} {str(p)!r} cannot be looked at ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
        raise error(f"{str(p)!r} is {kind}, not a {what}")
    return p


def read_json(path: Path, error: Optional[type] = None) -> Any:
    """Parse a JSON file (checked to be a regular file first, :func:`check_regular_file`); a file that is not JSON
    raises ``error`` (default :class:`pfm.errors.FileFormatError`; a flow's reader passes
    :class:`pfm.errors.FlowFileError`) naming it."""
    from .errors import FileFormatError

    check_regular_file(path, "JSON file", error)
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise (error or FileFormatError)(f"{str(path)!r} is not valid JSON ({exc})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it onto ``path`` (a symbolic link at
    ``path`` is followed: its target is replaced, the link kept)."""
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _no_space(exc, path)
        raise


def _no_space(exc: BaseException, path: Path) -> None:
    """Raise :class:`pfm.errors.NoSpaceError` naming ``path`` when ``exc`` is a full disk or quota (``ENOSPC``,
    ``EDQUOT``), so that the user reads one line, not a traceback; the temporary copy is already removed."""
    from .errors import NoSpaceError

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        err = NoSpaceError(f"no space left to write {str(path)!r} ({exc.strerror or 'disk full'}); what was there "
                           "is unchanged: free some space or write elsewhere")
        err.errno = exc.errno
        raise err from None


RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the file system cannot, so that the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"))


def recover_dir(path: str | os.PathLike) -> None:
    """Where a save by two renames (systems without an atomic exchange) was cut between them, ``path`` is missing
    and the old directory sits beside it as ``.NAME.old-PID``: move it back."""
    path = Path(os.path.realpath(path))
    if path.exists() or os.path.lexists(path):
        return
    for old in _backups(path):
        with contextlib.suppress(OSError):
            os.rename(old, path)
            return


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep(path: Path) -> None:
    """Remove what saves to ``path`` by processes that died before finishing left beside it: their temporary
    directories, and old directories of a two-rename swap whose new one is in place."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid() and not _pid_alive(int(parts[0])):
            shutil.rmtree(tmp, ignore_errors=True)
    if path.exists():
        for old in _backups(path):
            pid = old.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path, mode_dir: int, mode_file: int) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            f = os.path.join(dirpath, name)
            os.chmod(f, mode_file)
            _fsync(f)
        os.chmod(dirpath, mode_dir)
    _fsync(root)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary directory beside ``path``; on success swap it in for ``path`` (replacing an old one).

    A symbolic link at ``path`` is followed: its target is replaced and the link kept. The swap is one atomic
    exchange where the system has one (Linux), so a crash at any moment leaves the old or the new directory at
    ``path``; elsewhere it is two renames, and a crash between them is repaired by :func:`recover_dir`. Files get
    the permissions ``open`` would give them (the umask's), not the 0600 of temporary files.
    """
    path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    _sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        mask = _umask()
        _fsync_tree(tmp, 0o777 & ~mask, 0o666 & ~mask)
        if path.is_dir() and exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old directory
        else:
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        with contextlib.suppress(OSError):
            _fsync(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _no_space(exc, path)
        raise


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_output(path: str | os.PathLike, name: str, *, kind: str, inputs: Sequence[tuple[Any, str]] = (),
                 suffixes: Optional[Sequence[str]] = None) -> Path:
    """Check, before any work starts, that ``path`` can be written as ``kind`` (``"file"``, ``"flow"``: a flow
    directory, ``"dir"``: a directory pfm owns, e.g. checkpoints) without destroying anything the user did not ask to
    replace: not one of ``inputs`` (``(path, name)`` pairs) nor inside one nor holding one, a writable place, of
    the right suffix. Returns the path with symbolic links resolved. Raises :class:`InvalidInputError` naming
    ``name``."""
    from .errors import InvalidInputError

    if path is None or (isinstance(path, str) and not path.strip()):
        raise InvalidInputError(f"{name} must be a path, got {path!r}")
    p = Path(path)
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise InvalidInputError(f"{name} must end in {' or '.join(suffixes)}, got {str(path)!r}")
    real = Path(os.path.realpath(p))
    for other, other_name in inputs:
        if other is None:
            continue
        o = Path(os.path.realpath(other))
        if o == real:
            raise InvalidInputError(f"{name} {str(path)!r} is the {other_name}; write to another path")
        if _inside(real, o) and not o.is_file():  # (under a file: the message below says so)
            raise InvalidInputError(f"{name} {str(path)!r} lies inside the {other_name} {str(other)!r}; write "
                                    "elsewhere")
        if kind != "file" and _inside(o, real):
            raise InvalidInputError(f"{name} {str(path)!r} holds the {other_name} {str(other)!r}, which replacing "
                                    "it would delete; write elsewhere")
    if real.exists():
        if kind == "file" and real.is_dir():
            raise InvalidInputError(f"{name} {str(path)!r} is a directory; name a file")
        if kind != "file" and not real.is_dir():
            raise InvalidInputError(f"{name} {str(path)!r} exists and is not a directory")
        if kind == "flow" and any(real.iterdir()) and not (real / "config.json").exists():
            raise InvalidInputError(f"{name} {str(path)!r} is a non-empty directory that holds no flow; refusing "
                                    "to replace it")
    elif os.path.lexists(p):
        raise InvalidInputError(f"{name} {str(path)!r} is a broken symbolic link")
    anc = real if real.is_dir() else real.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InvalidInputError(f"{name} {str(path)!r} cannot be created: {str(anc)!r} is a file, not a directory")
    try:  # a real write, not os.access: root ignores permissions, but not a read-only file system
        fd, probe = tempfile.mkstemp(prefix=".pfm-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InvalidInputError(f"{name} {str(path)!r} cannot be written: {str(anc)!r} is not writable "
                                f"({exc.strerror})") from None
    return real


__all__ = ["atomic_file", "atomic_dir", "check_output", "check_regular_file", "read_json"]

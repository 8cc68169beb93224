"""The code version a run records (tag ``code_version``), which pairing and checkpoint identity include."""

from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """The git commit of the package's checkout (``-dirty`` with uncommitted changes), else the installed release.

    An installed release outside git is ``<version>+<hash of its sources>``, so two builds of one
    version with different code never look the same.
    """
    try:
        top, commit = _git("rev-parse", "--show-toplevel", "HEAD").splitlines()
        if Path(top).resolve() != PACKAGE_DIR.parent:  # an installed copy that merely lies inside some repository
            return _release_version()
        dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return _release_version()
    return f"{commit}-dirty" if dirty else commit


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=PACKAGE_DIR, capture_output=True, text=True, check=True, timeout=10).stdout


def _release_version() -> str:
    digest = hashlib.sha1()
    for source in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE_DIR).as_posix().encode())
        digest.update(source.read_bytes())
    try:
        version = metadata.version("ghm-sweep")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"{version}+{digest.hexdigest()[:12]}"

"""The code version a run records: the tag ``code_version`` (which pairing and checkpoint identity include), and the
MLflow system tags the UI shows as Source, Version and User (:func:`source_tags`)."""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

from mlflow.entities import SourceType
from mlflow.utils.credentials import read_mlflow_creds
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_BRANCH,
    MLFLOW_GIT_COMMIT,
    MLFLOW_GIT_DIRTY,
    MLFLOW_GIT_REPO_URL,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.cache
def code_version() -> str:
    """The git commit of the package's checkout (``-dirty`` with uncommitted changes), else the installed release.

    An installed release outside git is ``<version>+<hash of its sources>``, so two builds of one
    version with different code never look the same.
    """
    if not _checkout():  # an installed copy (which may merely lie inside some repository)
        return _release_version()
    commit = _git("rev-parse", "HEAD").strip()
    dirty = _git("status", "--porcelain", "--untracked-files=no").strip()
    return f"{commit}-dirty" if dirty else commit


@functools.cache
def source_tags() -> dict[str, str]:
    """MLflow's system tags for a run of this code: source name and type, git commit, branch, remote and dirty flag, user.

    Set explicitly rather than by ``mlflow.start_run``'s context, which reads ``sys.argv[0]``: in a
    sweep's trial that is Ray's worker script, not this project. The source is the app's entry
    point (``launch.py`` in a checkout, ``ghm/__main__.py`` installed); the git tags are those of the
    package's checkout (none for an installed release, whose ``code_version`` tag names it).
    """
    checkout = _checkout()
    entry = PACKAGE_DIR.parent / "launch.py" if checkout else PACKAGE_DIR / "__main__.py"
    tags = {MLFLOW_SOURCE_NAME: str(entry), MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
            MLFLOW_USER: read_mlflow_creds().username or getpass.getuser()}
    if checkout:
        commit = code_version()
        tags |= {MLFLOW_GIT_COMMIT: commit.removesuffix("-dirty"), MLFLOW_GIT_DIRTY: str(commit.endswith("-dirty")).lower()}
        for tag, args in ((MLFLOW_GIT_BRANCH, ("rev-parse", "--abbrev-ref", "HEAD")),
                          (MLFLOW_GIT_REPO_URL, ("remote", "get-url", "origin"))):
            with contextlib.suppress(OSError, subprocess.SubprocessError):  # no remote: the tag is left out
                tags[tag] = _git(*args).strip()
    return tags


@functools.cache
def _checkout() -> bool:
    """Whether the package runs from its own git checkout (not an installed copy)."""
    try:
        return Path(_git("rev-parse", "--show-toplevel").strip()).resolve() == PACKAGE_DIR.parent
    except (OSError, subprocess.SubprocessError):
        return False


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

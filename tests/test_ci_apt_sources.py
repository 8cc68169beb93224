"""The CI scripts take the Debian archive from the machine's apt sources (.ci/apt-sources.sh), in both formats, and name no host."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.conftest import ROOT


def sources(root: Path, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f". {ROOT / '.ci' / 'apt-sources.sh'}; {command}"],
                          env={**os.environ, "APT_SOURCES_ROOT": str(root)}, capture_output=True, text=True, timeout=30)


def test_one_line_and_deb822_sources_are_read_as_apt_reads_them(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/a.gpg] http://mirror.test/debian/ bookworm main contrib\n"
        "deb-src http://mirror.test/debian bookworm main\n"
        "deb http://mirror.test/debian bookworm-updates main  # trailing comment\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb deb-src\n"
        "# http://snapshot.test/archive/debian-security/20250520T000000Z\n"
        "URIs: http://security.test/debian-security\n"
        "Suites: bookworm-security\n"
        "Components: main\n"
        "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n Suites: not-a-field\n -----END PGP PUBLIC KEY BLOCK-----\n"
        "\n"
        "Types: deb\nURIs: http://off.test/debian\nSuites: trixie\nEnabled: no\n")
    (tmp_path / "sources.list.d" / "other.list.disabled-by-admin").write_text("deb http://ignored.test/debian trixie main\n")
    listed = sources(tmp_path, "apt_sources")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["http://mirror.test/debian/ bookworm", "http://mirror.test/debian bookworm-updates",
                                          "http://security.test/debian-security bookworm-security"]
    assert sources(tmp_path, "apt_uri_of bookworm").stdout.strip() == "http://mirror.test/debian"
    assert sources(tmp_path, "apt_uri_of bookworm-security").stdout.strip() == "http://security.test/debian-security"
    missing = sources(tmp_path, "apt_uri_of trixie")
    assert missing.returncode == 1 and "no apt source of the suite 'trixie'" in missing.stderr


def test_this_machines_sources_give_its_release() -> None:
    found = sources(Path("/etc/apt"), 'apt_uri_of "$(debian_codename)"')
    assert found.returncode == 0 and found.stdout.startswith(("http://", "https://", "file:/")), found.stderr


def test_the_ci_scripts_name_no_package_host() -> None:
    for script in sorted((ROOT / ".ci").rglob("*")):
        if script.is_file():
            assert not re.search(r"\b(?:https?|ftp)://", script.read_text(errors="replace")), script

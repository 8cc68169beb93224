"""The main job end to end: ``python launch.py`` with Hydra overrides, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("loss", ["ghm", "focal"])
def test_main_job_writes_the_four_figures(tmp_path: Path, loss: str) -> None:
    result = subprocess.run(
        [sys.executable, "launch.py", f"loss={loss}", "toy.steps=5", "toy.anchors=2000", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for name in ("gradient_norm_cls", "gradient_norm_reg", "reformulated_cls", "reformulated_reg"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
    assert "trained 5 steps" in result.stdout


def test_unknown_loss_setting_fails_before_work(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "launch.py", "+loss.cls.gamma=2.0", f"hydra.run.dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "classification loss 'ghmc' has no setting 'gamma'" in result.stderr
    assert not (tmp_path / "figures").exists()

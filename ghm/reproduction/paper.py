"""The paper's tables this project reproduces, as data: each row a setting of one experiment (``experiments/``) and its COCO AP.

Numbers from Li, Liu & Wang, "Gradient Harmonized Single-stage Detector" (AAAI 2019; RetinaNet
ResNet-50 FPN, COCO minival, 1x schedule) and its official code's README, as collected in the
project's reference notes. Each table names the setting its differences are taken against.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    """One row: the sweep's setting (its label, e.g. ``loss=ce_sl1``), the paper's name for it and its AP (%)."""

    setting: str
    name: str
    ap: float


@dataclass(frozen=True)
class PaperTable:
    """One of the paper's comparisons and the experiment (``experiments/<experiment>.yaml``) that repeats it."""

    experiment: str
    title: str
    baseline: str  # the setting the table's differences are taken against
    rows: tuple[PaperRow, ...]
    source: str

    def row(self, setting: str) -> PaperRow:
        return next(r for r in self.rows if r.setting == setting)


FOCAL = PaperRow("loss=focal", "FL + SL1", 35.6)

TABLES = (
    PaperTable("ghm_vs_focal", "GHM-C + GHM-R against focal loss (the main job)", "loss=focal",
               (FOCAL, PaperRow("loss=ghm", "GHM-C + GHM-R", 37.0)),
               "FL: paper and official README; GHM-C + GHM-R: official README (mmdetection-based code)"),
    PaperTable("ghm_halves", "GHM's halves against focal loss (focal + GHM-R has no paper number)", "loss=focal",
               (FOCAL, PaperRow("loss=ghmc_sl1", "GHM-C + SL1", 35.8), PaperRow("loss=ghm", "GHM-C + GHM-R", 37.0)),
               "paper and official README"),
    PaperTable("paper_cls_losses", "Classification losses (boxes: smooth L1)", "loss=focal",
               (PaperRow("loss=ce_sl1", "CE", 28.6), FOCAL, PaperRow("loss=ghmc_sl1", "GHM-C", 35.8)),
               "paper; FL and GHM-C also in the official README"),
    PaperTable("paper_bins", "GHM-C's number of unit regions M (boxes: smooth L1), against FL", "loss=focal",
               (FOCAL, *(PaperRow(f"loss.cls.bins={m}", f"GHM-C, M = {m}", ap)
                         for m, ap in ((5, 33.4), (10, 34.6), (20, 35.2), (30, 35.8), (40, 35.4)))),
               "paper"),
    PaperTable("paper_reg_losses", "Regression losses (classification: GHM-C)", "loss=ghmc_sl1",
               (PaperRow("loss=ghmc_sl1", "SL1", 35.8), PaperRow("loss=ghmc_asl1", "ASL1", 35.7), PaperRow("loss=ghm", "GHM-R", 36.4)),
               "paper"),
    PaperTable("reg_losses_focal", "Regression losses with focal loss for the scores (no paper number: the paper's table uses GHM-C)",
               "loss=focal", (FOCAL,), "paper (FL + SL1)"),
)

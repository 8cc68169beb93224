"""The losses of the GHM paper and their baselines, all called as ``loss(pred, target, label_weight)``.

Every module takes predictions, targets and label weights of one shape and returns a scalar, so
the detector combines any classification loss with any regression loss its config names (one
file per loss in ``conf/loss/cls/`` and ``conf/loss/reg/``, built with ``_target_``).

* Classification, logits ``[N, C]`` against one-hot float targets: :class:`GHMC`,
  :class:`FocalLoss`, :class:`BCELoss`.
* Regression, deltas ``[N, 4]`` against target deltas: :class:`GHMR`, :class:`SmoothL1Loss`,
  :class:`ASL1Loss`.

:mod:`ghm.losses.density` estimates the gradient density GHM divides by; :mod:`ghm.losses.reference`
is the per-region loop of the official code (test oracle, benchmark baseline);
:mod:`ghm.losses.figures` draws the paper's gradient-norm figures from live loss inputs.
"""

from ghm.losses.baselines import ASL1Loss, BCELoss, FocalLoss, SmoothL1Loss, authentic_smooth_l1
from ghm.losses.checks import NonFiniteInputError
from ghm.losses.ghm import GHMC, GHMR

__all__ = ["GHMC", "GHMR", "ASL1Loss", "BCELoss", "FocalLoss", "NonFiniteInputError", "SmoothL1Loss", "authentic_smooth_l1"]

"""Multi-label metrics: average precision, per-class thresholds tuned for F1, F1 and the exact-match ratio.

scikit-learn is no dependency of the tool (only of the search extra), so these follow its definitions in torch:
- a class's average precision (AP) is Σₙ (Rₙ − Rₙ₋₁) Pₙ over its distinct scores in descending order: no
  interpolation, tied scores count as one threshold (`average_precision_score`); mAP is the macro mean;
- a class's threshold is the one that maximises its F1 on the validation split: the cut between two adjacent
  distinct scores with the highest F1 (the higher cut among equal ones), placed halfway between them;
- F1 at the thresholds per class, macro (their mean) and micro (from the summed counts); the exact-match
  ratio is the share of images whose predicted set is their true set (scikit-learn's multi-label accuracy).
A class without positives in a split has no AP and no recall: it gets AP None, threshold 0.5 when tuned, and
is left out of the macro means (scikit-learn would count it as 0 with a warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from cnn_train.inference.infer import above_thresholds
from cnn_train.inference.inputs import DEFAULT_THRESHOLD


def _ranked(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per class (column), in descending score order: scores, cumulative true positives, images predicted
    when cutting below each row, and whether a row ends a run of tied scores (a place a threshold can cut)."""
    s, order = scores.double().sort(dim=0, descending=True, stable=True)
    tp = targets.double().gather(0, order).cumsum(0)
    ends = torch.ones_like(s, dtype=torch.bool)
    ends[:-1] = s[:-1] != s[1:]
    predicted = torch.arange(1, len(s) + 1, dtype=torch.float64, device=s.device).unsqueeze(1)
    return s, tp, predicted, ends


def average_precision(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """AP per class (float64, K) of N×K scores against N×K 0/1 targets; NaN for a class without positives.

    Each positive counts with the precision at the end of its run of tied scores: the sum of ΔRecall × Precision
    over distinct thresholds, regrouped by positive.
    """
    s, tp, predicted, ends = _ranked(scores, targets)
    rows = torch.arange(len(s), device=s.device).unsqueeze(1).expand_as(s)
    last_tie = torch.where(ends, rows, len(s)).flip(0).cummin(0).values.flip(0)
    precision = (tp / predicted).gather(0, last_tie)
    positive = torch.diff(tp, dim=0, prepend=torch.zeros_like(tp[:1]))
    count = tp[-1] if len(s) else torch.zeros(scores.shape[1], dtype=torch.float64)
    return (positive * precision).sum(0) / count.where(count > 0, torch.nan)


def tune_thresholds(scores: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per class, the threshold maximising F1 on (`scores`, `targets`): halfway between the lowest score it
    predicts positive and the next lower score (0 below the lowest); DEFAULT_THRESHOLD without positives."""
    s, tp, predicted, ends = _ranked(scores, targets)
    positives = tp[-1]
    f1 = torch.where(ends, 2 * tp / (predicted + positives), -1.0)
    best = f1.argmax(0, keepdim=True)  # the first maximum: the highest of equally good thresholds
    below = torch.cat([s[1:], torch.zeros_like(s[:1])])
    cut = (s.gather(0, best) + below.gather(0, best))[0] / 2
    return torch.where(positives > 0, cut, DEFAULT_THRESHOLD).tolist()


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, thresholds: Sequence[float], classes: Sequence[str]
) -> dict[str, Any]:
    """mAP, micro and macro F1 and the exact-match ratio at `thresholds`, and a row per class."""
    pred, truth = above_thresholds(probs, thresholds), targets > 0.5
    tp, fp, fn = ((pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0))
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    ap = average_precision(probs, targets)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1)
    has = (tp + fn) > 0
    rows = [
        {"class": c, "ap": None if a != a else a, "threshold": t, "precision": p, "recall": r, "f1": f,
         "support": int(n)}
        for c, a, t, p, r, f, n in zip(classes, ap.tolist(), thresholds, (tp / (tp + fp).clamp(min=1)).tolist(),
                                       (tp / (tp + fn).clamp(min=1)).tolist(), f1.tolist(), (tp + fn).tolist(),
                                       strict=True)
    ]  # fmt: skip
    micro = 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1)
    return {
        "map": ap[has].mean().item() if has.any() else None,
        "micro_f1": micro.item(),
        "macro_f1": f1[has].mean().item() if has.any() else None,
        "exact_match": (pred == truth).all(1).double().mean().item() if len(probs) else 0.0,
        "per_class": rows,
    }


def set_titles(rows: torch.Tensor, classes: Sequence[str], shares: bool = False) -> list[str]:
    """'bag, coat' per row of 0/1 labels (or of predictions), two labels a line; with `shares` a mixed label
    shows its weights."""
    titles = []
    for row in rows.tolist():
        named = [(classes[i], v) for i, v in enumerate(row) if v > 1e-3]
        shown = [c if not shares or v > 0.999 else f"{c} {v:.2f}" for c, v in named]
        titles.append("\n".join(", ".join(shown[i : i + 2]) for i in range(0, len(shown), 2)) or "(none)")
    return titles

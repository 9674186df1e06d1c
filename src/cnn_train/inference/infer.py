"""The one inference computation: fp32 logits of a contiguous network, shared by every caller.

Training runs in the precision and memory format `trainer.precision` / `trainer.channels_last` chose for the
machine. Inference does not: `infer` computes fp32 logits of a contiguous (NCHW) network, eagerly, on every
device and for every caller (validation, the test pass, cnn-eval, cnn-predict, the export check), so the
accuracy a run reports is the accuracy its saved weights give anyone who loads them, on any CPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from cnn_train.data.preprocess import Preprocess

# What every inference pass computes in; recorded in checkpoints and results.json.
INFERENCE = {"precision": "32", "memory_format": "contiguous", "compiled": False}


@torch.inference_mode()
def infer(
    model: Any, preprocess: Preprocess, x: torch.Tensor, tta: bool = False, multi_label: bool = False
) -> torch.Tensor:
    """fp32 logits for a uint8 batch, through the eval transform: the one inference computation.

    `model` is a contiguous fp32 network, or anything with its call signature and `eval()` (an ONNX
    export). With `tta` the image and its mirror image are both classified and their probabilities averaged
    (returned as log-probabilities, which softmax and cross-entropy treat as logits; for `multi_label` as
    the logits whose sigmoid is the mean of the two sigmoids).
    """
    model.eval()
    inputs = preprocess(x)
    logits = model(inputs).float()
    if not tta:
        return logits
    mirrored = model(preprocess.mirror(inputs)).float()
    if multi_label:  # logit(mean p) = log(Σ p) − log(Σ (1 − p)), each in log space
        yes = torch.logaddexp(F.logsigmoid(logits), F.logsigmoid(mirrored))
        return yes - torch.logaddexp(F.logsigmoid(-logits), F.logsigmoid(-mirrored))
    both = torch.stack([logits.log_softmax(1), mirrored.log_softmax(1)])
    return torch.logsumexp(both, 0) - math.log(2)


def probabilities(logits: torch.Tensor, multi_label: bool = False) -> torch.Tensor:
    """Class probabilities from `infer`'s logits: softmax over the classes, or each class's sigmoid."""
    return logits.sigmoid() if multi_label else logits.softmax(1)


def above_thresholds(probs: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """N×K booleans: each class's probability at or above its threshold (a multi-label prediction).

    Compared in float64, where the thresholds were tuned: a threshold halfway between two fp32 scores
    stays strictly between them.
    """
    limits = torch.tensor(list(thresholds), dtype=torch.float64, device=probs.device)
    return probs.double() >= limits

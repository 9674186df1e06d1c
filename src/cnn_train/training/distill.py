"""Knowledge distillation (Hinton, Vinyals & Dean 2015): the student also learns a teacher's soft answers.

    loss = alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(student, labels)

`alpha` weighs the teacher's term (alpha = 0 is plain training, 1 learns from the teacher alone); T² keeps
that term's gradients the size of the labels' as T grows, as the paper prescribes. The teacher is a trained
checkpoint run in the inference numerics (fp32, eval mode, no gradients) on the very batch the student sees:
augmented and mixed, then put through the teacher's own eval transform where it differs (input side,
channels, mean/std, pixel permutation).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnn_train.data.images import EvalTransform
from cnn_train.data.permute import permute_pixels
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.runtime.errors import UserError


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, hard: torch.Tensor, alpha: float, temperature: float
) -> torch.Tensor:
    """alpha · T² · KL(p_teacher ‖ p_student), both softened by T and averaged over the batch, + (1 − alpha) · hard."""
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True
    )
    return alpha * t * t * soft + (1 - alpha) * hard


def check_classes(path: str | Path, teacher: list[str], student: list[str]) -> None:
    """The teacher's outputs mean the student's classes, in the same order; else one line saying how not."""
    if teacher == student:
        return
    only_teacher = [c for c in teacher if c not in student]
    only_student = [c for c in student if c not in teacher]
    if not only_teacher and not only_student:
        raise UserError(
            f"trainer.distill.teacher: {path} has the data's classes in another order: {teacher} vs {student}"
        )
    raise UserError(
        f"trainer.distill.teacher: {path} was trained on other classes: only the teacher has {only_teacher}, "
        f"only the data has {only_student}"
    )


@dataclass
class Teacher:
    """A trained network the student learns from, and how the student's input becomes its input."""

    path: str
    name: str  # its registry name (resnet9, ...)
    model: nn.Module  # contiguous fp32, eval mode, frozen
    spec: EvalTransform  # its eval transform
    student: Preprocess  # the student's, to undo its normalisation when the teacher's differs
    own: Preprocess | None  # the teacher's, when it differs from the student's; None: the same input
    alpha: float
    temperature: float

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """fp32 logits for the student's model input (normalised, augmented, mixed)."""
        return self.model(self.teacher_input(inputs).contiguous()).float()

    def teacher_input(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.own is None:
            return inputs
        s = self.student
        x = inputs.float() if s.order is None else permute_pixels(inputs.float(), torch.argsort(s.order))
        pixels = (x * s.std + s.mean) * 255  # the augmented image back on the 0–255 scale Preprocess takes
        return self.own(pixels)

    def loss(self, student_logits: torch.Tensor, inputs: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
        return distillation_loss(student_logits, self.logits(inputs), hard, self.alpha, self.temperature)

    def describe(self) -> dict[str, Any]:
        return {
            "teacher": self.path,
            "teacher_model": self.name,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }


def load_teacher(
    distill: Any, classes: list[str], spec: EvalTransform, device: torch.device
) -> Teacher | None:
    """`trainer.distill` as a Teacher on `device`; None when no teacher is set."""
    if not distill.teacher:
        return None
    path = str(distill.teacher)
    payload = checkpoint.load(Path(path).expanduser())
    check_classes(path, list(payload["classes"]), list(classes))
    model = checkpoint.inference_model(payload, device, path).requires_grad_(False)
    own = checkpoint.eval_transform(payload)
    student = Preprocess(spec).to(device)
    return Teacher(
        path, payload["model"]["name"], model, own, student, None if own == spec else Preprocess(own).to(device),
        float(distill.alpha), float(distill.temperature),
    )  # fmt: skip

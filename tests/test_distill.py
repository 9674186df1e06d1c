"""trainer.distill: the loss is Hinton's, the teacher sees the student's very batch, mismatched classes fail."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnn_train.data.images import EvalTransform
from cnn_train.data.permute import permute_pixels, pixel_permutation
from cnn_train.data.preprocess import Preprocess
from cnn_train.reports.run import write_run_report
from cnn_train.runtime.errors import UserError
from cnn_train.training.distill import Teacher, check_classes, distillation_loss
from cnn_train.training.fit import fit
from cnn_train.training.session import build
from tests.conftest import TINY, make_config

# The student in the teacher's numerics (fp32, contiguous): a student starting from the teacher's weights then
# computes the teacher's very logits. In bf16 it computes others by design (that is what bf16 means).
EXACT = ["trainer.precision=32", "trainer.channels_last=false", "trainer.threads=1"]


@pytest.fixture(scope="module")
def teacher(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LeNet trained on (synthetic) MNIST: its best.pt and results.json."""
    run_dir = tmp_path_factory.mktemp("teacher")
    fit(make_config("model=lenet", "data=mnist", f"data.root={mnist_root}", *TINY, *EXACT), run_dir)
    return run_dir / "best.pt"


def student_config(mnist_root: Path, teacher: Path, *more: str):
    return make_config(
        "model=lenet", "data=mnist", f"data.root={mnist_root}", *TINY, *EXACT,
        f"trainer.distill.teacher={teacher}", *more,
    )  # fmt: skip


def hand_loss(s: list[list[float]], t: list[list[float]], y: list[int], alpha: float, temp: float) -> float:
    """alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha)·CE(s, y), batch means, in plain Python floats."""

    def softmax(row: list[float], temp: float) -> list[float]:
        e = [math.exp(v / temp) for v in row]
        return [v / sum(e) for v in e]

    kl = ce = 0.0
    for si, ti, yi in zip(s, t, y, strict=True):
        p, q = softmax(ti, temp), softmax(si, temp)
        kl += sum(pj * math.log(pj / qj) for pj, qj in zip(p, q, strict=True))
        ce += -math.log(softmax(si, 1.0)[yi])
    n = len(y)
    return alpha * temp * temp * kl / n + (1 - alpha) * ce / n


@pytest.mark.parametrize("alpha,temp", [(0.5, 4.0), (0.9, 2.0), (0.0, 3.0), (1.0, 1.0)])
def test_loss_is_kl_times_t_squared_plus_ce(alpha: float, temp: float) -> None:
    s = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2]]
    t = [[2.5, 0.0, 1.0], [-0.4, 1.5, 0.2]]
    y = [2, 1]
    student, logits_t = torch.tensor(s), torch.tensor(t)
    got = distillation_loss(student, logits_t, F.cross_entropy(student, torch.tensor(y)), alpha, temp).item()
    # float32 softmax/log of O(1) values over 3 classes: a few ulps each, far inside 1e-5 relative
    assert got == pytest.approx(hand_loss(s, t, y, alpha, temp), rel=1e-5, abs=1e-6)


def test_teacher_sees_the_augmented_mixed_batch(mnist_root: Path, teacher: Path) -> None:
    """A student starting from the teacher's weights: on its first (cropped, flipped, mixed-up) batch both
    give the same logits, so with alpha=1 the loss is KL = 0; were the teacher fed anything else (the raw
    images, another draw) the two distributions would differ."""
    cfg = student_config(
        mnist_root, teacher, "augmentation=basic", "augmentation.mixup_alpha=1.0", f"model.weights={teacher}",
        "trainer.distill.alpha=1.0", "trainer.distill.temperature=2.0",
    )  # fmt: skip
    s = build(cfg)
    x, y = next(iter(s.train_batches.epoch()))
    torch.manual_seed(0)
    loss, logits, target = s.step.forward(x, y)
    assert target.ndim == 2  # mixup made soft labels: the batch was mixed
    assert abs(loss.item()) < 1e-5  # KL of one distribution with itself, up to fp32 rounding (T² = 4)
    torch.manual_seed(0)
    s.step.teacher.alpha = 0.0  # the labels' term alone: the same draw gives the plain cross-entropy
    plain, again, _ = s.step.forward(x, y)
    assert torch.equal(again, logits) and plain.item() == pytest.approx(
        s.step.loss_fn(logits.float(), target).item()
    )


def test_teacher_input_through_its_own_eval_transform() -> None:
    """A teacher trained at another side, with other statistics and a pixel permutation: the student's input,
    turned back into pixels, becomes what the teacher's eval transform makes of the same images."""
    student = EvalTransform(28, 1, (0.286,), (0.353,))
    own = EvalTransform(32, 1, (0.5,), (0.25,), permute_seed=3)
    teacher = Teacher(
        "t.pt", "lenet", torch.nn.Identity(), own, Preprocess(student), Preprocess(own), 0.5, 4.0
    )
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    got = teacher.teacher_input(Preprocess(student)(x))
    expected = Preprocess(own)(x)
    torch.testing.assert_close(
        got, expected, atol=1e-5, rtol=0
    )  # unnormalise + renormalise: a few ulps of 255
    plain = permute_pixels(got, torch.argsort(pixel_permutation(3, 32)))  # the real image, not noise
    assert plain.shape == (4, 1, 32, 32) and plain.std() > 0.1


def test_results_name_the_teacher_and_its_accuracy(mnist_root: Path, teacher: Path, tmp_path: Path) -> None:
    results = fit(student_config(mnist_root, teacher, "trainer.distill.alpha=0.7"), tmp_path)
    d = results["distill"]
    assert d["teacher"] == str(teacher) and d["teacher_model"] == "lenet" and d["alpha"] == 0.7
    teacher_results = json.loads((teacher.parent / "results.json").read_text())
    assert d["teacher_test_acc"] == teacher_results["test_acc"]  # the same test batches, the same weights
    assert json.loads((tmp_path / "results.json").read_text())["distill"] == d
    page = html.unescape(write_run_report(tmp_path).read_text())
    assert "distilled from" in page and str(teacher) in page and f"{d['teacher_test_acc']:.4f}" in page


def test_teacher_of_other_classes_is_one_line(cifar_root: Path, teacher: Path, tmp_path: Path) -> None:
    cfg = make_config("model=lenet", "data=cifar10", f"data.root={cifar_root}", *TINY,
                      f"trainer.distill.teacher={teacher}")  # fmt: skip
    with pytest.raises(UserError) as e:
        fit(cfg, tmp_path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(
        f"trainer.distill.teacher: {teacher} was trained on other"
    )
    assert "'0 - zero'" in message and "'airplane'" in message
    with pytest.raises(UserError, match="another order"):
        check_classes("t.pt", ["cat", "dog"], ["dog", "cat"])
    with pytest.raises(UserError, match="trainer.distill.teacher: .*missing.pt does not exist"):
        fit(student_config(cifar_root, tmp_path / "missing.pt"), tmp_path)

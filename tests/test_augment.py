"""Per-image policies, random erasing, mixup and cutmix: each trick is on, draws per image, and trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from cnn_train.config import check_target_keys
from cnn_train.data.datasets import read_idx
from cnn_train.data.loaders import Batches
from cnn_train.training.engine import EpochProgress, Meter, train_one_epoch
from cnn_train.training.fit import fit, label_titles, training_samples
from cnn_train.training.session import Session, build
from tests.conftest import TINY, make_config

POLICIES = ["randaugment", "trivialaugment", "autoaugment"]


@pytest.fixture(scope="module")
def fashion_test(fashion_root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 256 real Fashion-MNIST test images (uint8 N×1×28×28) and labels."""
    x = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[:256].unsqueeze(1)
    y = read_idx(fashion_root / "t10k-labels-idx1-ubyte.gz")[:256].long()
    return x, y


def spatial(out: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Per output: True when it is not one function of the input pixel value (a warp or a sharpen moved it).

    Brightness, contrast, solarize, posterize, equalize, autocontrast and invert map equal pixels to equal
    pixels; shears, translations, rotations and sharpening do not.
    """
    value = image.flatten().long().expand(len(out), -1)
    flat = out.flatten(1)
    hi = torch.full((len(out), 256), -1.0).scatter_reduce(1, value, flat, "amax")
    lo = torch.full((len(out), 256), 2.0).scatter_reduce(1, value, flat, "amin")
    used = torch.zeros(256, dtype=torch.bool)
    used[image.flatten().long()] = True
    return ((hi - lo)[:, used] > 1e-5).any(1)


@pytest.mark.parametrize("policy", POLICIES)
def test_policies_draw_per_image(policy: str, fashion_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    """48 copies of one grey image: some get a spatial operation and some not, in every batch.

    One draw per batch (torchvision's v2 policies called on a batch, Kornia's) gives 0 % or ~100 %.
    """
    torch.manual_seed(0)
    aug = instantiate(make_config(f"augmentation={policy}").augmentation)
    image = fashion_test[0][0]
    fractions = []
    for _ in range(2):
        out = aug(image.float().div(255).expand(48, -1, -1, -1).clone())
        assert out.shape == (48, 1, 28, 28) and out.min() >= 0 and out.max() <= 1
        fractions.append(spatial(out, image).float().mean().item())
    assert all(0.05 < f < 0.95 for f in fractions), fractions


def test_random_erasing_erases_with_its_probability() -> None:
    torch.manual_seed(0)
    white = torch.ones(2000, 1, 28, 28)
    for p in (0.0, 0.3, 1.0):
        aug = instantiate(make_config("augmentation=basic", f"augmentation.random_erasing={p}").augmentation)
        aug.flip, aug.padding = False, 0  # only the erasing changes pixels
        erased = (aug(white) == 0).flatten(1)
        assert abs(erased.any(1).float().mean().item() - p) < 0.03
        if p:  # a box of 2-33 % of the image, as torchvision's RandomErasing
            area = erased.float().mean(1)[erased.any(1)]
            assert area.min() > 0.015 and area.max() < 0.4 and 0.1 < area.mean() < 0.25


@pytest.mark.numerics
def test_mixup_and_cutmix_targets_are_soft_and_match_the_images(
    fashion_test: tuple[torch.Tensor, torch.Tensor],
) -> None:
    x, y = fashion_test[0][:64].float().div(255), fashion_test[1][:64]
    other = y.roll(1)
    differ = y != other
    torch.manual_seed(0)
    for trick in ("mixup_alpha", "cutmix_alpha"):
        aug = instantiate(make_config(f"augmentation.{trick}=1.0").augmentation, num_classes=10)
        mixed, target = aug.mix(x, y)
        assert target.shape == (64, 10)
        torch.testing.assert_close(target.sum(1), torch.ones(64))
        own = target[torch.arange(64), y]
        assert ((own > 0.01) & (own < 0.99))[differ].all()  # soft: both images weigh
        torch.testing.assert_close(target[torch.arange(64), other][differ], 1 - own[differ])
        lam = own.view(-1, 1, 1, 1)
        if trick == "mixup_alpha":  # each image is the weighted mean of itself and its neighbour
            torch.testing.assert_close(mixed[differ], (lam * x + (1 - lam) * x.roll(1, 0))[differ])
        else:  # a box of the neighbour, pasted: every pixel is one of the two; the box's area is its weight
            from_other = (mixed == x.roll(1, 0)) & (mixed != x)
            assert ((mixed == x) | (mixed == x.roll(1, 0))).all()
            assert (from_other.flatten(1).float().mean(1) <= (1 - own) + 1e-6)[differ].all()
            assert from_other[differ].any()


@pytest.fixture(scope="module")
def session(fashion_root: Path) -> Session:
    """One built run (mixup on, label smoothing 0.1) whose step the tests below drive."""
    cfg = make_config(
        f"data.root={fashion_root}", *TINY, "trainer.device=cpu", "trainer.precision=32",
        "augmentation.mixup_alpha=1.0", "trainer.label_smoothing=0.1",
    )  # fmt: skip
    return build(cfg)


def test_step_loss_is_against_soft_targets_with_label_smoothing(session: Session) -> None:
    x, y = next(iter(session.train_batches))
    loss, logits, target = session.step.forward(x, y)
    assert target.shape == (len(y), 10) and (target.max(1).values < 1).any()
    torch.testing.assert_close(loss, F.cross_entropy(logits, target, label_smoothing=0.1))
    assert abs(loss.item() - F.cross_entropy(logits, y, label_smoothing=0.1).item()) > 1e-4


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policy_with_every_trick_takes_training_steps(policy: str, session: Session) -> None:
    cfg = make_config(
        f"augmentation={policy}", "augmentation.random_erasing=0.5", "augmentation.cutmix_alpha=1.0"
    )
    check_target_keys(cfg.augmentation, "augmentation")
    session.step.augment = instantiate(cfg.augmentation, num_classes=10)
    before = [p.detach().clone() for p in session.model.parameters()]
    done = train_one_epoch(session.step, session.train_batches, EpochProgress(epoch=1))
    assert done.step == 2 and math.isfinite(done.loss_sum)
    assert any(not torch.equal(a, b) for a, b in zip(before, session.model.parameters(), strict=True))


def test_train_accuracy_under_soft_targets_counts_the_larger_share() -> None:
    """A prediction is right when it names the class with the larger weight in the mixed target."""
    target = torch.zeros(2, 10)
    target[:, 2], target[:, 5] = 0.3, 0.7
    meter = Meter(EpochProgress(epoch=1), torch.device("cpu"))
    meter.add(torch.tensor(1.0), F.one_hot(torch.tensor([5, 2]), 10).float(), target)
    assert meter.snapshot().correct == 1


def test_trivialaugment_with_every_trick_trains_a_run(fashion_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        "augmentation=trivialaugment", "augmentation.random_erasing=0.5", "augmentation.mixup_alpha=0.2",
        "augmentation.cutmix_alpha=1.0", f"data.root={fashion_root}", *TINY, "trainer.device=cpu",
    )  # fmt: skip
    results = fit(cfg, tmp_path / "run")
    assert results["best_epoch"] == 1 and (tmp_path / "run" / "samples.png").is_file()
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2  # one epoch of mixed-label training was recorded


@pytest.mark.numerics
def test_sample_grid_shows_the_mixed_images_and_their_label_shares(session: Session) -> None:
    """samples.png under mixup: the images the network is given, titled with the two classes' shares."""
    images, titles = training_samples(session, 16)
    first = session.data.train.subset(torch.arange(16))
    x, y = next(iter(Batches(first, session.spec, 16, session.device)))
    plain = session.eval_preprocess.unit(x)
    assert images.shape == plain.shape and not torch.allclose(images, plain)
    # mixup: each image is λ·itself + (1-λ)·its neighbour in the batch (rolled by one)
    lam = ((images - plain.roll(1, 0)).flatten(1).sum(1) / (plain - plain.roll(1, 0)).flatten(1).sum(1))[0]
    torch.testing.assert_close(images, lam * plain + (1 - lam) * plain.roll(1, 0))
    classes = session.data.classes
    mixed = [t for t, a, b in zip(titles, y.tolist(), y.roll(1).tolist(), strict=True) if a != b]
    assert mixed and all(" + " in t for t in mixed)
    assert label_titles(torch.tensor([2, 5]), classes) == [classes[2], classes[5]]
    target = torch.zeros(2, 10)
    target[0, 5], target[0, 2], target[1, 7] = 0.7, 0.3, 1.0
    assert label_titles(target, classes) == [f"{classes[5]} 0.70 + {classes[2]} 0.30", classes[7]]

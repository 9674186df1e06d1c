"""Multi-label classification: metrics and loss by hand, the Fashion-MNIST mosaics, and a trained model that
predicts several labels per image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnn_train.analysis.cam import save_prediction_cams
from cnn_train.analysis.evaluation import evaluate_checkpoint
from cnn_train.analysis.multilabel import average_precision, multilabel_metrics, tune_thresholds
from cnn_train.data.batch_augment import BatchAugment
from cnn_train.data.datasets import Dataset, FileSplit, TensorSplit, load_dataset, read_idx
from cnn_train.data.images import EvalTransform
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess, read_image_tensor
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.inference.predict import expand_inputs, predict, write_predictions
from cnn_train.reports.sweep import write_summary
from cnn_train.runtime.errors import UserError
from cnn_train.training.engine import EpochProgress
from cnn_train.training.fit import TrainState, fit
from cnn_train.training.losses import MultiLabelLoss, positive_weights
from cnn_train.training.session import check_labels
from tests.conftest import make_config

CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
VAL_BATCHES, TEST_BATCHES, BATCH = 16, 8, 32
# One thread: batches this small gain little from a second, and lose much when other jobs share the cores.
TINY_RUN = ["data=fashion_mnist_multilabel", "model=resnet9", "model.args.width=4", "optimizer.lr=0.01",
            "trainer.max_epochs=1", "trainer.limit_train_batches=300", f"trainer.limit_val_batches={VAL_BATCHES}",
            f"trainer.limit_test_batches={TEST_BATCHES}", f"data.batch_size={BATCH}", "trainer.threads=1"]  # fmt: skip

# Three classes, four images. a: a plain ranking; b: a tie between a positive and a negative; c: no positive.
SCORES = torch.tensor(
    [[0.9, 0.9, 0.2], [0.8, 0.5, 0.3], [0.7, 0.5, 0.1], [0.6, 0.1, 0.4]], dtype=torch.float64
)
TARGETS = torch.tensor([[1.0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]])


def test_average_precision_by_hand() -> None:
    ap = average_precision(SCORES, TARGETS)
    # a: positives at ranks 1 and 3: (1/1 + 2/3) / 2. b: the tie at 0.5 is one threshold (precision 1/3,
    # recall 1/2), then 0.1 (precision 2/4, recall 1): 1/2 · 1/3 + 1/2 · 1/2. c: no positive, no AP.
    assert ap[0].item() == pytest.approx(5 / 6, abs=1e-12)
    assert ap[1].item() == pytest.approx(5 / 12, abs=1e-12)
    assert math.isnan(ap[2].item())


def test_thresholds_maximise_f1_on_validation_by_hand() -> None:
    # a: cutting below the 3rd score gives F1 2·2/(3+2) = 0.8, the best; halfway to the 4th: 0.65.
    # b: only predicting all four reaches F1 2·2/(4+2); below the lowest score (0.1) the cut is 0.05.
    # c: no positive to tune on: 0.5.
    assert tune_thresholds(SCORES, TARGETS) == pytest.approx([0.65, 0.05, 0.5], abs=1e-12)
    # F1 2/3 both when predicting the top image only and when predicting all four: the higher cut wins
    ranked = torch.tensor([[0.9], [0.8], [0.7], [0.6]], dtype=torch.float64)
    assert tune_thresholds(ranked, torch.tensor([[1.0], [0], [0], [1]])) == pytest.approx([0.85], abs=1e-12)
    m = multilabel_metrics(SCORES, TARGETS, [0.65, 0.05, 0.5], ["a", "b", "c"])
    # a: tp 2 fp 1 → F1 0.8; b: tp 2 fp 2 → F1 2/3; c (no positive, none predicted) is left out of the means.
    assert m["macro_f1"] == pytest.approx((0.8 + 2 / 3) / 2, abs=1e-12)
    assert m["micro_f1"] == pytest.approx(2 * 4 / (2 * 4 + 3), abs=1e-12)
    assert m["map"] == pytest.approx((5 / 6 + 5 / 12) / 2, abs=1e-12)
    assert m["exact_match"] == 0.25  # only the last image's predicted set is its true set
    assert [r["ap"] for r in m["per_class"]][2] is None and m["per_class"][0]["support"] == 2


def test_bce_loss_pos_weight_and_smoothing_by_hand() -> None:
    logits, target = torch.tensor([[0.0, math.log(3)]]), torch.tensor([[1.0, 0.0]])
    # −log σ(0) = log 2; −log(1 − σ(log 3)) = −log(1/4) = 2 log 2; the mean over the two classes.
    assert MultiLabelLoss()(logits, target).item() == pytest.approx(1.5 * math.log(2), rel=1e-6)
    assert MultiLabelLoss(torch.tensor([3.0, 1.0]))(logits, target).item() == pytest.approx(
        2.5 * math.log(2), rel=1e-6
    )
    smoothed = -(0.1 * math.log(0.75) + 0.9 * math.log(0.25))  # class 2's target 0 becomes 0.1
    assert MultiLabelLoss(smoothing=0.2)(logits, target).item() == pytest.approx(
        (math.log(2) + smoothed) / 2, rel=1e-6
    )
    rows = TensorSplit(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), TARGETS)
    assert positive_weights(rows, 3).tolist() == [1.0, 1.0, 1.0]  # 2 of 4 for a and b; c has no positive
    rows = TensorSplit(rows.images, torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1]]))
    assert positive_weights(rows, 3).tolist() == pytest.approx([3.0, 1 / 3, 1.0])


def test_best_epoch_is_chosen_by_validation_map() -> None:
    state = TrainState(monitor="map")
    first = {"loss": 0.2, "acc": 0.5, "map": 0.9}
    _, improved = state.record(EpochProgress(1, seen=1, seconds=1.0), first)
    assert improved
    _, improved = state.record(EpochProgress(2, seen=1, seconds=1.0), {"loss": 0.1, "acc": 0.6, "map": 0.8})
    assert not improved and state.best_epoch == 1 and state.history[1]["val_map"] == 0.8


def test_label_sets_mix_with_the_images_weights() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(6, 1, 8, 8), (torch.rand(6, 4) < 0.5).float()
    mixed, target = BatchAugment(mixup_alpha=0.4, num_classes=4).mix(x, y)
    lam = ((mixed - x.roll(1, 0)) / (x - x.roll(1, 0))).median().item()  # mixup: λ·x + (1 − λ)·x rolled
    assert torch.allclose(target, lam * y + (1 - lam) * y.roll(1, 0), atol=1e-5)


def test_file_label_sets_become_rows(tmp_path: Path, folder_root: Path) -> None:
    for i in range(3):
        Image.new("L", (8, 8), 60 * i).save(tmp_path / f"{i}.png")
    split = FileSplit(
        [(str(tmp_path / f"{i}.png"), s) for i, s in enumerate([(0, 2), (1,), ()])], label_count=3
    )
    _, y = next(iter(Batches(split, EvalTransform(8, 1, (0.5,), (0.5,)), 3, torch.device("cpu"))))
    assert y.tolist() == [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    folders = load_dataset("image_folder", folder_root, 0.1, 0, multi_label=True)  # data.multi_label=true
    assert folders.multi_label and folders.train.samples[0][1] == (0,)  # blue, as a set of one
    _, y = next(iter(Batches(folders.train, EvalTransform(8, 3, (0.5,), (0.5,)), 64, torch.device("cpu"))))
    assert y.sum(1).tolist() == [1.0] * len(folders.train) and y.sum(0).tolist() == [12.0, 12.0, 12.0]


@pytest.fixture(scope="module")
def mosaics(fashion_root: Path):
    return load_dataset("fashion_mnist_multilabel", fashion_root, 0.1, 42)


def test_mosaic_labels_are_their_tiles_classes_and_test_images_stay_out_of_training(
    fashion_root: Path, mosaics
) -> None:
    def by_content(prefix: str) -> dict[bytes, int]:
        images = read_idx(fashion_root / f"{prefix}-images-idx3-ubyte.gz").numpy()
        labels = read_idx(fashion_root / f"{prefix}-labels-idx1-ubyte.gz").tolist()
        return {img.tobytes(): y for img, y in zip(images, labels, strict=True)}

    train_images, test_images = by_content("train"), by_content("t10k")
    blank = bytes(28 * 28)
    assert blank not in train_images and blank not in test_images
    seen = {}
    for name, sources in (("train", train_images), ("val", train_images), ("test", test_images)):
        split = getattr(mosaics, name)
        tiles = (
            split.images.numpy().reshape(-1, 2, 28, 2, 28).transpose(0, 1, 3, 2, 4).reshape(-1, 4, 28 * 28)
        )
        seen[name] = set()
        for mosaic, labels in zip(tiles, split.labels.tolist(), strict=True):
            shown = [t.tobytes() for t in mosaic if t.tobytes() != blank]
            assert 1 <= len(shown) <= 4
            assert all(t in sources for t in shown)  # every item is a real image of its own split's source
            assert {sources[t] for t in shown} == {i for i, v in enumerate(labels) if v == 1}
            seen[name].update(shown)
    assert not seen["train"] & seen["val"]
    assert len(seen["test"]) == len(test_images)  # every test image is used, and only in test mosaics
    assert len(mosaics.train) == 54_000 and len(mosaics.val) == 6_000 and len(mosaics.test) == 10_000


def test_test_mosaics_depend_on_nothing_but_their_seed(fashion_root: Path, mosaics) -> None:
    other = load_dataset("fashion_mnist_multilabel", fashion_root, 0.2, 7)
    assert torch.equal(other.test.images, mosaics.test.images) and torch.equal(
        other.test.labels, mosaics.test.labels
    )
    assert not torch.equal(other.val.images[:100], mosaics.val.images[:100])


def test_flip_tta_averages_each_class_probability() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten())
    preprocess = Preprocess(EvalTransform(8, 1, (0.5,), (0.5,)))
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    plain, mirrored = infer(model, preprocess, x), infer(model, preprocess, x.flip(-1))
    both = infer(model, preprocess, x, tta=True, multi_label=True)
    # probabilities near 1/2 are O(1): a few float32 ulps apart after the log-space sums
    assert torch.allclose(both.sigmoid(), (plain.sigmoid() + mirrored.sigmoid()) / 2, rtol=0, atol=1e-6)


def test_settings_that_need_label_sets_or_single_labels_fail_before_training(fashion_root: Path) -> None:
    tiny = TensorSplit(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([[1.0, 0], [0, 1]]))
    sets = Dataset("sets", tiny, tiny, None, ["a", "b"], 1, 28, multi_label=True)
    with pytest.raises(UserError, match=r"^trainer.class_weights: .*trainer.pos_weight=balanced"):
        check_labels(make_config("trainer.class_weights=balanced"), sets)
    single = Dataset("one", TensorSplit(tiny.images, torch.tensor([0, 1])), tiny, None, ["a", "b"], 1, 28)
    for override in ("trainer.pos_weight=balanced", "trainer.early_stopping.monitor=val_map",
                     "optimized_metric=best_val_map"):  # fmt: skip
        with pytest.raises(UserError, match=rf"^{override.split('=')[0]}: .* needs multi-label data"):
            check_labels(make_config(override), single)


@pytest.fixture(scope="module")
def trained(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ResNet-9 trained for 300 steps of 32 mosaics; report.html written."""
    run_dir = tmp_path_factory.mktemp("multilabel_run")
    fit(make_config(*TINY_RUN, "trainer.report=true"), run_dir)
    return run_dir


@pytest.mark.slow
def test_best_pt_carries_thresholds_tuned_on_validation_and_is_tested_at_them(trained: Path) -> None:
    payload = checkpoint.load(trained / "best.pt")
    assert payload["multi_label"] and len(payload["thresholds"]) == 10
    data = checkpoint.dataset(payload)
    model = checkpoint.inference_model(payload, torch.device("cpu"))
    spec = checkpoint.eval_transform(payload)
    probs, targets = [], []
    for x, y in Batches(data.val, spec, BATCH, torch.device("cpu"), limit=VAL_BATCHES):
        probs.append(infer(model, Preprocess(spec), x).sigmoid())
        targets.append(y)
    # validation's own computation, repeated: the thresholds are exactly those tuned for best.pt's weights
    assert tune_thresholds(torch.cat(probs), torch.cat(targets)) == payload["thresholds"]
    results = json.loads((trained / "results.json").read_text())
    report = evaluate_checkpoint(trained / "best.pt", trained / "eval", limit_batches=TEST_BATCHES)
    assert report["map"] == results["test_map"] and report["exact_match"] == results["test_acc"]
    assert results["best_val_map"] == payload["metrics"]["val_map"] and results["monitor"] == "val_map"
    section = json.loads((trained / "report.json").read_text())["test"]
    assert [r["threshold"] for r in section["per_class"]] == payload["thresholds"]
    # 0.83 here; a model that learned only how often each class occurs ranks at random: mAP ≈ 0.23
    assert results["test_map"] > 0.7
    assert "test mAP" in (trained / "report.html").read_text()


@pytest.mark.slow
def test_predict_lists_every_label_above_its_threshold(
    trained: Path, fashion_root: Path, tmp_path: Path
) -> None:
    mosaics = load_dataset("fashion_mnist_multilabel", fashion_root, 0.1, 42).test
    truth = []
    for i in range(32):
        Image.fromarray(mosaics.images[i, 0].numpy()).save(tmp_path / f"{i:02d}.png")
        truth.append({c for c, v in zip(CLASSES, mosaics.labels[i].tolist(), strict=True) if v})
    rows, failed = predict(trained / "best.pt", expand_inputs(str(tmp_path)))
    assert not failed and all(r.multi_label for r in rows)
    predicted = [{c for c, _ in r.topk} for r in rows]
    assert sum(len(p) >= 2 for p in predicted) >= 12  # several labels on many images, not a top-1
    hits = sum(len(p & t) for p, t in zip(predicted, truth, strict=True))
    assert 2 * hits / (sum(map(len, predicted)) + sum(map(len, truth))) > 0.6  # micro F1 (0.76 on all test)
    payload = checkpoint.load(trained / "best.pt")
    spec, model = checkpoint.eval_transform(payload), checkpoint.inference_model(payload, torch.device("cpu"))
    images = torch.stack([read_image_tensor(r.path, spec) for r in rows])
    probs = infer(model, Preprocess(spec), images).sigmoid().tolist()
    above = [
        {c for c, p, t in zip(CLASSES, ps, payload["thresholds"], strict=True) if p >= t} for ps in probs
    ]
    assert predicted == above  # each image's labels: exactly the classes at or above their own threshold
    write_predictions(tmp_path / "out.json", rows)
    assert json.loads((tmp_path / "out.json").read_text())[0]["labels"][0]["class"] == rows[0].topk[0][0]
    maps = save_prediction_cams(trained / "best.pt", rows[:4], tmp_path / "cam", torch.device("cpu"))
    assert len(maps) == sum(len(r.topk) for r in rows[:4])  # one Grad-CAM per predicted label


def test_sweep_summary_adds_map_columns_for_multi_label_jobs(tmp_path: Path) -> None:
    for job, results in enumerate([{"best_val_map": 0.9, "test_map": 0.8}, {}]):
        (tmp_path / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / str(job) / ".hydra" / "overrides.yaml").write_text(f"- trainer.seed={job}\n")
        base = {"best_val_acc": 0.5, "test_acc": 0.4, "wall_seconds": 1.0}
        (tmp_path / str(job) / "results.json").write_text(json.dumps({**base, **results}))
    write_summary(tmp_path, "best_val_map")
    header, first, second = (tmp_path / "summary.csv").read_text().splitlines()
    assert header.startswith("job,swept,status,best,best_val_acc,test_acc,best_val_map,test_map,")
    assert first.startswith("0,trainer.seed=0,ok,*,0.5,0.4,0.9,0.8,") and second.startswith(
        "1,trainer.seed=1,ok,,0.5,0.4,,,"
    )

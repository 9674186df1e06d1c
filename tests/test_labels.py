"""Labels as people keep them: CSV/TSV files with bad rows, k-fold cross-validation, the balanced sampler."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from PIL import Image

from cnn_train.analysis.datacheck import check_dataset
from cnn_train.analysis.evaluation import evaluate_checkpoint
from cnn_train.data.datasets import FileSplit, TensorSplit, load_from_config
from cnn_train.data.images import EvalTransform
from cnn_train.data.labels import sampler_weights, stratified_folds
from cnn_train.data.loaders import Batches, cache_split
from cnn_train.data.table import LabelFile
from cnn_train.inference import checkpoint
from cnn_train.runtime.errors import Interrupted, UserError
from cnn_train.training.fit import check_config, fit
from tests.conftest import TINY, cli, make_config, sigterm_after_first_save
from tests.test_reliability import metrics

COLOURS = {"red": 0, "green": 1, "blue": 2}  # the channel each class lights up
# train / val / test rows per class: imbalanced, as people's photos are
COUNTS = {"red": (20, 3, 3), "green": (10, 3, 3), "blue": (6, 3, 3)}
SPEC = EvalTransform(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def photo(path: Path, colour: str, seed: int) -> None:
    """A small PNG lit in its class's channel, with noise, so a network can learn the class."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 80, (20, 24, 3))
    img[..., COLOURS[colour]] += 170
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)


def write_rows(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """photos/<colour>_<i>.png and labels.csv (path,label,split) next to them; header = row 1."""
    root = tmp_path_factory.mktemp("table")
    rows = [["path", "label", "split"]]
    for colour, counts in COUNTS.items():
        i = 0
        for split, n in zip(("train", "val", "test"), counts, strict=True):
            for _ in range(n):
                photo(root / "photos" / f"{colour}_{i}.png", colour, seed=len(rows))
                rows.append([f"photos/{colour}_{i}.png", colour, split])
                i += 1
    write_rows(root / "labels.csv", rows)
    return root


def data_config(file: Path, *overrides: str) -> DictConfig:
    return make_config("data=csv", f"data.file={file}", *overrides).data


def rows_of(file: Path) -> list[list[str]]:
    with file.open(newline="") as f:
        return list(csv.reader(f))


def test_csv_rows_become_the_splits_with_sorted_class_names(photos: Path) -> None:
    data = load_from_config(data_config(photos / "labels.csv"), seed=0)
    assert data.classes == ["blue", "green", "red"]
    assert (len(data.train), len(data.val), len(data.test)) == (36, 9, 9)  # the split column, not val_split
    expected = {str(photos / p): data.classes.index(c) for p, c, _ in rows_of(photos / "labels.csv")[1:]}
    for split in (data.train, data.val, data.test):
        assert all(expected[p] == y for p, y in split.samples)
    assert not data.multi_label and data.skipped_rows == 0
    # The same rows relative to data.root, tab-separated (.tsv); and semicolons, found by sniffing.
    short = [[p.removeprefix("photos/"), c, s] for p, c, s in rows_of(photos / "labels.csv")[1:]]
    tsv = write_rows(photos / "short.tsv", [["file", "class", "split"], *short], "\t")
    again = load_from_config(
        data_config(
            tsv, f"data.root={photos / 'photos'}", "data.path_column=file", "data.label_column=class"
        ),
        0,
    )
    assert again.train.samples == data.train.samples and again.test.samples == data.test.samples
    semi = write_rows(photos / "semi.csv", rows_of(photos / "labels.csv"), ";")
    assert load_from_config(data_config(semi), 0).val.samples == data.val.samples


def test_without_a_split_column_val_split_holds_out(photos: Path) -> None:
    rows = [r[:2] for r in rows_of(photos / "labels.csv") if r[2] != "test"]
    data = load_from_config(data_config(write_rows(photos / "nosplit.csv", rows), "data.val_split=0.25"), 0)
    assert (len(data.train), len(data.val), data.test) == (34, 11, None)


BAD = {  # kind: (the row's cells, what the one line says)
    "missing file": (["photos/gone.png", "red", "train"], "no such file"),
    "not an image": (["notes.txt", "red", "train"], "not an image (UnidentifiedImageError)"),
    "empty label": (["photos/red_0.png", " ", "train"], "empty label"),
    "unknown split": (["photos/red_1.png", "red", "holdout"], "split 'holdout' is not train, val or test"),
}


@pytest.mark.parametrize("kind", BAD)
def test_a_bad_row_is_one_line_naming_its_row_and_file_or_is_skipped(photos: Path, kind: str) -> None:
    (photos / "notes.txt").write_text("not an image")
    cells, why = BAD[kind]
    rows = rows_of(photos / "labels.csv")
    rows.insert(7, cells)  # row 8 as a spreadsheet numbers it: the header is row 1
    file = write_rows(photos / f"bad_{kind.replace(' ', '_')}.csv", rows)
    with pytest.raises(UserError) as e:
        load_from_config(data_config(file), 0)
    assert str(e.value) == f"data.file: {file} row 8: {cells[0]}: {why}; data.strict=false skips bad rows"
    lenient = load_from_config(data_config(file, "data.strict=false"), 0)
    assert lenient.skipped_rows == 1 and len(lenient.train) + len(lenient.val) + len(lenient.test) == 54


@pytest.fixture(scope="module")
def lenient_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A tiny LeNet run on a CSV with two bad rows and data.strict=false."""
    rows = rows_of(photos / "labels.csv")
    rows[5:5] = [["photos/gone.png", "red", "train"], ["photos/red_2.png", "", "train"]]
    file = write_rows(photos / "two_bad.csv", rows)
    over = ["model=lenet", "data=csv", f"data.file={file}", "data.strict=false", "data.image_size=16", *TINY]
    run_dir = tmp_path_factory.mktemp("csv_run")
    fit(make_config(*over), run_dir)
    return run_dir, over


def test_a_csv_run_counts_skipped_rows_and_eval_and_data_check_read_its_data(
    lenient_run: tuple[Path, list[str]], photos: Path
) -> None:
    run_dir, _ = lenient_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["skipped_rows"] == 2
    assert json.loads((run_dir / "class_indices.json").read_text()) == {"0": "blue", "1": "green", "2": "red"}
    payload = checkpoint.load(run_dir / "best.pt")
    assert (
        checkpoint.dataset(payload).test.samples
        == load_from_config(payload["config"]["data"], 42).test.samples
    )
    evaluated = evaluate_checkpoint(run_dir / "best.pt", run_dir / "eval", batch_size=8, limit_batches=1)
    assert evaluated["accuracy"] == results["test_acc"]  # the same 8 test images, the same numbers
    cfg = payload["config"]["data"]
    report = check_dataset("csv", None, 0.2, 42, table=LabelFile.from_config(cfg))
    assert report["summary"]["skipped_rows"] == 2
    assert report["class_counts"]["train"] == {"blue": 6, "green": 10, "red": 20}  # the bad rows left out
    assert report["class_counts"]["test"] == {"blue": 3, "green": 3, "red": 3}


@pytest.mark.slow
def test_a_bad_row_stops_cnn_train_before_training(photos: Path, tmp_path: Path) -> None:
    rows = rows_of(photos / "labels.csv")
    rows.insert(3, ["photos/gone.png", "red", "train"])
    file = write_rows(tmp_path / "labels.csv", rows)
    proc = cli(
        "cnn-train", "data=csv", f"data.file={file}", f"data.root={photos}", f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: data.file: {file} row 4: photos/gone.png: no such file; "
                                   "data.strict=false skips bad rows")  # fmt: skip
    assert not (tmp_path / "run" / "last.pt").exists()


def test_several_labels_per_row_make_multi_hot_rows(photos: Path) -> None:
    rows = [["path", "tags"], ["photos/red_0.png", "red | blue"], ["photos/red_1.png", "red"],
            ["photos/green_0.png", "green|red|green"], ["photos/blue_0.png", "blue"]]  # fmt: skip
    file = write_rows(photos / "tags.csv", rows)
    data = load_from_config(data_config(file, "data.label_column=tags", "data.label_separator=|",
                                        "data.val_split=0.25"), 0)  # fmt: skip
    assert data.multi_label and data.classes == ["blue", "green", "red"]
    split = data.train.joined(data.val)
    want = {"red_0": [1, 0, 1], "red_1": [0, 0, 1], "green_0": [0, 1, 1], "blue_0": [1, 0, 0]}
    assert isinstance(split, FileSplit) and split.label_count == 3
    decoded = next(y for _, y in Batches(split, SPEC, 4, torch.device("cpu")))
    cached = cache_split(split, SPEC, 0, strict=True).labels
    expected = torch.tensor([want[Path(p).stem] for p, _ in split.samples], dtype=torch.float32)
    assert decoded.dtype == cached.dtype == torch.float32
    assert torch.equal(decoded, expected) and torch.equal(cached, expected)


def assert_folds(label_sets: list[tuple[int, ...]], k: int, seed: int) -> torch.Tensor:
    """Every fold assignment property the k-fold promise rests on; returns the assignment."""
    fold = stratified_folds(label_sets, k, seed)
    assert fold.shape == (len(label_sets),) and set(fold.tolist()) == set(range(k))  # each image in one fold
    sizes = torch.bincount(fold, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    for key in set(label_sets):
        members = torch.tensor([i for i, s in enumerate(label_sets) if s == key])
        per_fold = torch.bincount(fold[members], minlength=k).double()
        assert (per_fold - len(members) / k).abs().max() < 1, key  # within one image of the ideal share
    return fold


def test_folds_are_disjoint_covering_stratified_and_fixed_by_the_seed() -> None:
    rng = np.random.default_rng(0)
    single = [(int(c),) for c in rng.choice(5, 203, p=[0.5, 0.3, 0.1, 0.07, 0.03])]
    fold = assert_folds(single, 5, seed=1)
    assert torch.equal(fold, assert_folds(single, 5, seed=1))
    assert not torch.equal(fold, assert_folds(single, 5, seed=2))
    multi = [tuple(sorted({int(c) for c in rng.choice(4, int(rng.integers(1, 3)))})) for _ in range(150)]
    assert_folds(multi, 4, seed=0)  # by label set


def test_kfold_pools_train_and_val_keeps_test_and_each_image_validates_once(photos: Path) -> None:
    given = load_from_config(data_config(photos / "labels.csv"), seed=7)
    pooled = sorted(given.train.samples + given.val.samples)
    vals = []
    for i in range(3):
        data = load_from_config(data_config(photos / "labels.csv", "data.folds=3", f"data.fold={i}"), seed=7)
        assert data.test.samples == given.test.samples
        assert sorted(data.train.samples + data.val.samples) == pooled
        vals.append({p for p, _ in data.val.samples})
    assert sum(len(v) for v in vals) == len(set.union(*vals)) == 45  # disjoint, covering train + val
    with pytest.raises(UserError, match=r"^data.fold: 3 must lie in 0..2"):
        load_from_config(data_config(photos / "labels.csv", "data.folds=3", "data.fold=3"), seed=7)


@pytest.mark.parametrize(
    "override,message",
    [("data.folds=1", r"data.folds: 1 must be a whole number ≥ 2"), ("data.fold=2", r"data.fold: 2 needs data.folds"),
     ("data.sampler=weighted", r"data.sampler: 'weighted' is not one of shuffle, balanced")],
)  # fmt: skip
def test_bad_fold_and_sampler_settings_fail_before_any_data_is_read(override: str, message: str) -> None:
    with pytest.raises(UserError, match=f"^{message}"):
        check_config(make_config(override))


@pytest.mark.slow
def test_a_kfold_sweep_reports_mean_and_std_over_folds(photos: Path, tmp_path: Path) -> None:
    proc = cli(
        "cnn-train", "-m", "model=lenet", "data=csv", f"data.file={photos / 'labels.csv'}", "data.image_size=16",
        "data.folds=3", "data.fold=range(3)", f"hydra.sweep.dir={tmp_path}", *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with (tmp_path / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["job"] for r in rows] == ["0", "1", "2", "mean", "std"]
    for key in ("best_val_acc", "test_acc"):
        per_fold = [json.loads((tmp_path / j / "results.json").read_text())[key] for j in "012"]
        assert float(rows[3][key]) == pytest.approx(statistics.mean(per_fold), abs=1e-6)
        assert float(rows[4][key]) == pytest.approx(statistics.stdev(per_fold), abs=1e-6)
    assert rows[3]["status"] == "3 of 3 folds" and "data.fold" not in rows[3]["swept"]
    assert ">mean<" in (tmp_path / "report.html").read_text()


def test_balanced_weights_count_an_image_as_its_rarest_label() -> None:
    weights = sampler_weights([(0,), (0,), (0, 1), (2,), (1, 2), ()])
    # class counts: 0 → 3, 1 → 2, 2 → 2; the unlabelled image is a group of one
    assert weights.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 2, 1 / 2, 1 / 2, 1.0])


def test_balanced_sampler_evens_out_the_classes_on_both_paths(photos: Path) -> None:
    labels = torch.tensor([0] * 900 + [1] * 100)
    split = TensorSplit(torch.zeros(1000, 1, 1, 1, dtype=torch.uint8), labels)
    gen = torch.Generator().manual_seed(3)
    batches = Batches(split, SPEC, 50, torch.device("cpu"), shuffle=True, drop_last=True, generator=gen,
                      weights=sampler_weights(split.label_sets()))  # fmt: skip
    drawn = torch.cat([y for _, y in batches])
    assert len(drawn) == 1000  # the epoch keeps its length
    # Each draw is class 1 with probability 1/2: Binomial(1000, 1/2) has sd √250 ≈ 15.8; 5 sd ≈ 79 fails once
    # in ~1.7 million seeds (a shuffle would give exactly 100).
    assert abs(int((drawn == 1).sum()) - 500) <= 79
    # The file loader draws the same indices from the same generator state.
    files = load_from_config(data_config(photos / "labels.csv"), 0).train
    tensors = cache_split(files, SPEC, 0, strict=True)
    w = sampler_weights(files.label_sets())
    order = []
    for split in (files, tensors):
        b = Batches(split, SPEC, 8, torch.device("cpu"), shuffle=True, drop_last=True,
                    generator=torch.Generator().manual_seed(5), weights=w)  # fmt: skip
        order.append(torch.cat([y for _, y in b]))
    assert torch.equal(order[0], order[1])


@pytest.mark.parametrize(
    "cache", ["false", pytest.param("true", marks=pytest.mark.slow)], ids=["files", "memory"]
)
def test_balanced_sampler_resumes_mid_epoch_exactly(photos: Path, tmp_path: Path, cache: str) -> None:
    over = [
        "model=lenet", "data=csv", f"data.file={photos / 'labels.csv'}", "data.image_size=16", f"data.cache={cache}",
        "data.sampler=balanced", "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=2",
        "trainer.deterministic=true", "trainer.checkpoint_every_n_steps=3", "augmentation=basic",
    ]  # fmt: skip
    fit(make_config(*over), tmp_path / "reference")
    watcher = sigterm_after_first_save(tmp_path / "stopped")
    with pytest.raises(Interrupted, match="SIGTERM at epoch 1"):
        fit(make_config(*over), tmp_path / "stopped")
    watcher.join()
    assert checkpoint.load(tmp_path / "stopped" / "last.pt")["partial"]["step"] >= 3
    fit(make_config(*over, "trainer.resume=auto"), tmp_path / "stopped")
    assert metrics(tmp_path / "stopped") == metrics(tmp_path / "reference")
    ours, theirs = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("stopped", "reference"))
    assert (ours["test_acc"], ours["test_loss"]) == (theirs["test_acc"], theirs["test_loss"])

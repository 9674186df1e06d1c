"""cnn-data on a real image folder with planted leaks: an exact copy and a resized, JPEG re-encoded copy."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnn_train.analysis.duplicates import near_pairs
from cnn_train.cli.tools import data_main
from tests.conftest import write_folder


def scene(seed: int, size: int = 64) -> Image.Image:
    """A photo-like picture (smooth background, a few shapes): what a perceptual hash is made for."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    base = np.stack([np.outer(ramp, ramp) * rng.uniform(60, 200) for _ in range(3)], axis=-1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 20, 2)
        w, h = rng.integers(10, 30, 2)
        draw.ellipse([x0, y0, x0 + w, y0 + h], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return img


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """train/val/test class folders, with a train photo copied into test and a re-encoded one in val."""
    root = tmp_path_factory.mktemp("leaky")
    for i, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 2))):
        write_folder(root / split, n, seed=20 + i)
    paths = {"root": str(root)}
    for name, seed, folder in (("copied", 1, "red"), ("reencoded", 2, "green"), ("unrelated", 3, "blue")):
        paths[name] = str(root / "train" / folder / f"{name}.png")
        scene(seed).save(paths[name])
    paths["exact"] = str(root / "test" / "red" / "copy.png")
    shutil.copyfile(paths["copied"], paths["exact"])
    paths["near"] = str(root / "val" / "green" / "smaller.jpg")
    Image.open(paths["reencoded"]).resize((48, 48), Image.Resampling.BILINEAR).save(paths["near"], quality=80)
    paths["broken"] = str(root / "test" / "blue" / "broken.png")
    Path(paths["broken"]).write_bytes(Path(paths["copied"]).read_bytes()[:100])  # cut short
    return paths


@pytest.fixture(scope="module")
def report(planted: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """cnn-data's entry point with a user's command line (in this process: a new one costs a torch import)."""
    out = tmp_path_factory.mktemp("datacheck") / "check.json"
    args = ["cnn-data", "data=image_folder", f"data.root={planted['root']}", f"output={out}"]
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(sys, "argv", args)
        data_main()
    assert "exact_duplicate_groups_across_splits" in printed.getvalue()  # the printed table
    return json.loads(out.read_text())


def paths_of(groups: list[list[dict]]) -> list[list[tuple[str, str]]]:
    return [[(m["split"], m["path"]) for m in g] for g in groups]


def test_planted_exact_copy_is_found_across_splits(report: dict, planted: dict[str, str]) -> None:
    assert paths_of(report["exact_duplicates"]) == [
        [("train", planted["copied"]), ("test", planted["exact"])]
    ]
    assert report["summary"]["exact_duplicate_groups_across_splits"] == 1
    assert report["summary"]["exact_duplicate_groups_within_splits"] == 0
    assert report["summary"]["test_exact_in_train"] == 1


def test_planted_reencoded_copy_is_found_and_nothing_else(report: dict, planted: dict[str, str]) -> None:
    near = paths_of(report["near_duplicates"])
    assert near == [[("train", planted["reencoded"]), ("val", planted["near"])]]
    flagged = {p for g in near + paths_of(report["exact_duplicates"]) for _, p in g}
    assert planted["unrelated"] not in flagged
    assert report["summary"]["val_near_in_train"] == 1


def test_counts_sizes_modes_and_unreadable(report: dict, planted: dict[str, str]) -> None:
    assert report["unreadable"] == [planted["broken"]]
    # write_folder: 6 per class in train (+ 3 planted photos), 2 in val (+1), 2 in test (+1 copy)
    assert report["class_counts"]["train"] == {"blue": 7, "green": 7, "red": 7}
    assert report["class_counts"]["val"] == {"blue": 2, "green": 3, "red": 2}
    assert report["class_counts"]["test"] == {"blue": 2, "green": 2, "red": 3}
    assert report["summary"]["imbalance_ratio"] == 1.0
    assert report["sizes"]["val"]["48x48"] == 1 and report["modes"]["val"] == {"RGB": 7}


def test_band_hashing_finds_exactly_the_pairs_an_all_pairs_scan_finds() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 1000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    flips = np.uint64(1) << rng.integers(0, 64, (100, 3)).astype(np.uint64)
    hashes[:100] = hashes[100:200] ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]  # 100 pairs ≤ 3 bits apart
    found = {tuple(p) for p in np.sort(near_pairs(hashes, 4), axis=1).tolist()}
    i, j = np.triu_indices(len(hashes), 1)
    xor = hashes[i] ^ hashes[j]
    close = np.unpackbits(xor.view(np.uint8).reshape(-1, 8), axis=1).sum(1) <= 4
    assert found == set(zip(i[close].tolist(), j[close].tolist(), strict=True)) and len(found) >= 100

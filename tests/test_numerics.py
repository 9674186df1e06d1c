"""One numerics for inference, whatever a run trained in: every test here runs in fp32 and in bf16.

bf16 autocast runs on any x86 CPU (emulated, slowly, without AVX-512 BF16/AMX), so these tests exercise on
every machine the path that `precision=auto` takes on a CPU or GPU with native bf16.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from cnn_train.analysis.evaluation import evaluate_checkpoint
from cnn_train.data.datasets import read_idx
from cnn_train.data.loaders import Batches
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.export import export
from cnn_train.inference.predict import predict
from cnn_train.models import build_model
from cnn_train.runtime.errors import Interrupted
from cnn_train.training.fit import fit
from tests.conftest import make_config, sigterm_after_first_save

PRECISIONS = pytest.mark.parametrize("precision", ["32", "bf16"])
# LeNet on a slice of Fashion-MNIST, deterministic, tested on 40 batches of the test split.
RUN = [
    "model=lenet", "data.batch_size=64", "trainer.limit_train_batches=30", "trainer.limit_val_batches=8",
    "trainer.limit_test_batches=40", "optimizer.lr=0.003", "trainer.deterministic=true",
]  # fmt: skip
TIMING = {"seconds", "images_per_s"}

pytestmark = pytest.mark.numerics  # every test here compares float computations


def metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def results(run_dir: Path) -> dict:
    import json

    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="module", params=["32", "bf16"])
def trained(
    request: pytest.FixtureRequest, fashion_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """One epoch of LeNet trained in fp32 or in bf16 autocast with channels_last."""
    run_dir = tmp_path_factory.mktemp(f"numerics_{request.param}")
    fit(make_config(*RUN, "trainer.max_epochs=1", f"trainer.precision={request.param}"), run_dir)
    return run_dir


@pytest.mark.slow
def test_eval_reproduces_the_run_exactly(trained: Path) -> None:
    ran = results(trained)
    assert ran["precision"] in ("32", "bf16") and ran["channels_last"] is True
    assert ran["inference"]["precision"] == "32"
    assert checkpoint.load(trained / "best.pt")["inference"] == ran["inference"]
    test = evaluate_checkpoint(trained / "best.pt", trained / "eval", limit_batches=40)
    assert test["images"] == 40 * 64 and test["batch_size"] == 64  # the run's own batch size by default
    assert test["accuracy"] == ran["test_acc"] and test["loss"] == ran["test_loss"]
    assert ran["test_acc"] > 0.6  # 30 batches of LeNet: far above the 0.1 of chance
    val = evaluate_checkpoint(trained / "best.pt", trained / "eval_val", split="val", limit_batches=8)
    assert val["split"] == "val" and val["images"] == 8 * 64
    assert val["accuracy"] == ran["best_val_acc"]


def test_predict_and_export_compute_the_test_pass_logits(
    trained: Path, fashion_root: Path, tmp_path: Path
) -> None:
    """cnn-predict's probabilities and the export's logits against a forward written out here: the first 16
    test images read from the IDX file, scaled to [0, 1] and normalised with the checkpoint's own mean and
    std, through the checkpoint's layers one by one in fp32.

    Both sides compute the same fp32 sums, maybe in another order (other kernels, a traced graph): a few
    ulps times the longest reduction (LeNet's first linear layer, 400 terms) is about 4·400·2⁻²⁴ ≈ 1e-4
    relative. Inference in bf16, a wrong mean or std, or a resize would be off by 1e-3 or far more.
    """
    payload = checkpoint.load(trained / "best.pt")
    spec = payload["eval_transform"]
    assert (spec["image_size"], spec["channels"], spec["permute_seed"]) == (28, 1, None)  # no resize, grey
    images = read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[:16]  # uint8, 16×28×28
    x = ((images.float() / 255 - spec["mean"][0]) / spec["std"][0]).unsqueeze(1)
    network = build_model(payload["model"]["name"], **payload["model"]["kwargs"])
    network.load_state_dict(payload["state_dict"])
    assert isinstance(network, torch.nn.Sequential)  # LeNet: its layers in order are its forward
    with torch.no_grad():
        reference = x
        for layer in network.eval():
            reference = layer(reference)
    paths = [tmp_path / f"{i}.png" for i in range(16)]
    for img, path in zip(images, paths, strict=True):
        Image.fromarray(img.numpy()).save(path)  # PNG is lossless: the same uint8 pixels come back
    rows, failed = predict(trained / "best.pt", paths, topk=10, batch_size=16)
    assert failed == []
    for row, p in zip(rows, reference.softmax(1), strict=True):
        got = dict(row.topk)
        assert row.topk[0][0] == payload["classes"][int(p.argmax())]
        # softmax's slope is at most 1/2: a probability moves by no more than its logits do
        assert [got[c] for c in payload["classes"]] == pytest.approx(p.tolist(), abs=1e-4)
    export(trained / "best.pt", "torchscript", tmp_path / "m.ts")
    with torch.no_grad():
        exported = torch.jit.load(str(tmp_path / "m.ts"))(x)  # the export takes normalised images
    torch.testing.assert_close(exported, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_flip_tta_averages_the_image_and_its_mirror(fashion_root: Path, tmp_path: Path) -> None:
    for precision in ("32", "bf16"):
        run_dir = tmp_path / precision
        ran = fit(make_config(*RUN, "trainer.max_epochs=1", "trainer.tta=true", "trainer.limit_train_batches=10",
                              "trainer.limit_test_batches=4", f"trainer.precision={precision}"), run_dir)  # fmt: skip
        payload = checkpoint.load(run_dir / "best.pt")
        model = checkpoint.restore_model(payload).eval()
        spec = checkpoint.eval_transform(payload)
        batches = Batches(checkpoint.dataset(payload).test, spec, 64, torch.device("cpu"), limit=4)
        losses, hits = [], 0
        with torch.no_grad():
            for x, y in batches:
                inputs = Preprocess(spec)(x)
                p = (model(inputs).softmax(1) + model(inputs.flip(-1)).softmax(1)) / 2  # by hand
                losses.append(-p[torch.arange(len(y)), y].log())
                hits += int((p.argmax(1) == y).sum())
        assert ran["tta"] is True
        assert ran["test_acc"] == hits / 256
        assert ran["test_loss"] == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)
        plain = evaluate_checkpoint(run_dir / "best.pt", tmp_path / "plain", limit_batches=4, tta=False)
        assert plain["loss"] != pytest.approx(ran["test_loss"], rel=1e-3)  # TTA changed the logits
        as_run = evaluate_checkpoint(run_dir / "best.pt", tmp_path / "as_run", limit_batches=4)  # tta unset
        assert (as_run["accuracy"], as_run["loss"], as_run["tta"]) == (
            ran["test_acc"],
            ran["test_loss"],
            True,
        )


@pytest.mark.slow
@PRECISIONS
def test_deterministic_runs_are_identical(precision: str, fashion_root: Path, tmp_path: Path) -> None:
    cfg = make_config(
        *RUN, "augmentation=basic", "trainer.max_epochs=2", "trainer.limit_train_batches=10",
        "trainer.limit_test_batches=4", f"trainer.precision={precision}",
    )  # fmt: skip
    fit(cfg, tmp_path / "a")
    fit(cfg, tmp_path / "b")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert results(tmp_path / "a")["test_loss"] == results(tmp_path / "b")["test_loss"]


@pytest.mark.slow
@PRECISIONS
def test_mid_epoch_resume_equals_the_uninterrupted_run(
    precision: str, fashion_root: Path, tmp_path: Path
) -> None:
    over = [
        *RUN, "augmentation=basic", "trainer.max_epochs=2", "trainer.limit_train_batches=15",
        "trainer.limit_test_batches=4", "trainer.checkpoint_every_n_steps=5", f"trainer.precision={precision}",
        "trainer.ema_decay=0.9", "trainer.accumulate_grad_batches=2",  # their state resumes exactly too
    ]  # fmt: skip
    fit(make_config(*over), tmp_path / "reference")
    stopped = tmp_path / "stopped"
    watcher = sigterm_after_first_save(stopped)
    with pytest.raises(Interrupted, match="SIGTERM at epoch 1"):
        fit(make_config(*over), stopped)
    watcher.join()
    step = checkpoint.load(stopped / "last.pt")["partial"]["step"]
    assert step >= 10 and step % 2 == 0  # the signal waits for the end of an accumulation group
    fit(make_config(*over, "trainer.resume=auto"), stopped)
    assert metrics(stopped) == metrics(tmp_path / "reference")
    ours, theirs = results(stopped), results(tmp_path / "reference")
    assert (ours["test_acc"], ours["test_loss"]) == (theirs["test_acc"], theirs["test_loss"])

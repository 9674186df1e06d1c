"""From checkpoint to answer: predict on ONNX without torch, errors before any framework, int8, cnn-bench.

The fast tests share one tiny LeNet (synthetic MNIST) and its ONNX export. The int8 and bench tests need
accuracies worth comparing: a LeNet on a slice of real Fashion-MNIST, `cnn-export quantize=int8` run once
(slow: the export, two passes over 10,000 test images).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from PIL import Image

from cnn_train.analysis.quantization import check_drop, export_int8
from cnn_train.config import BENCH_FORMATS
from cnn_train.data.datasets import read_idx
from cnn_train.inference.export import export
from cnn_train.inference.onnx_session import OnnxSession
from cnn_train.reports.rundata import BENCH_COLUMNS, bench_rows
from cnn_train.runtime.cpu import cpu_name
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.hardware import cpu_has_fast_bf16
from cnn_train.training.fit import fit
from tests.conftest import BIN, TINY, cli, make_config

# Runs cnn-predict's main() in a fresh interpreter, then reports which frameworks that imported.
PROBE = """
import json, sys
sys.argv = ["cnn-predict", *sys.argv[1:]]
from cnn_train.cli.predict import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
loaded = [m for m in ("torch", "torchvision", "onnxruntime", "matplotlib") if m in sys.modules]
print(json.dumps({"code": code, "loaded": loaded}))
"""


def probe(*args: str, cwd: Path) -> tuple[dict, subprocess.CompletedProcess[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc


@pytest.fixture(scope="module")
def tiny(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LeNet's best.pt, with its ONNX export beside it (best.onnx)."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    fit(make_config("model=lenet", "data=mnist", f"data.root={mnist_root}", *TINY), run_dir)
    export(run_dir / "best.pt", "onnx")
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def trained(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("deploy_run")
    cfg = make_config(
        "model=lenet", "trainer.max_epochs=1", "trainer.limit_train_batches=100", "trainer.limit_val_batches=2",
        "optimizer.lr=0.003",
    )  # fmt: skip
    fit(cfg, run_dir)
    return run_dir / "best.pt"


@pytest.fixture(scope="module")
def int8(trained: Path) -> dict:
    """`cnn-export quantize=int8` as a user runs it: best.onnx, best.int8.onnx and best.int8.json."""
    proc = cli("cnn-export", f"ckpt={trained}", "quantize=int8", "calibration_images=128", cwd=trained.parent)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and "best.int8.onnx" in proc.stderr
    return json.loads(trained.with_suffix(".int8.json").read_text())


@pytest.fixture(scope="module")
def images(fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("deploy_images")
    for i, img in enumerate(read_idx(fashion_root / "t10k-images-idx3-ubyte.gz")[:6]):
        Image.fromarray(img.numpy()).save(folder / f"{i}.png")
    return folder


@pytest.mark.slow
def test_int8_export_keeps_accuracy_within_the_bound(trained: Path, int8: dict) -> None:
    fp32_file, int8_file = trained.with_suffix(".onnx"), trained.with_suffix(".int8.onnx")
    tested = json.loads((trained.parent / "results.json").read_text())["test_acc"]
    assert int8["split"] == "test" and int8["images"] == 10_000
    # ONNX Runtime's fp32 logits equal PyTorch's up to rounding: at most a few near-tied images flip
    assert abs(int8["fp32_accuracy"] - tested) <= 5 / 10_000
    assert int8["fp32_accuracy"] - int8["int8_accuracy"] <= 0.01  # the 1-point bound
    assert int8["drop_points"] == round((int8["fp32_accuracy"] - int8["int8_accuracy"]) * 100, 4)
    assert int8["quantization"]["calibration_images"] == 128 and int8["cpu"].startswith(cpu_name())
    graph = onnx.load(str(int8_file)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 4]
    assert weights, "convolution weights are int8"
    per_channel = [
        i for i in graph.initializer if i.name.endswith("_scale") and len(i.dims) == 1 and i.dims[0] > 1
    ]
    assert per_channel, "one scale per output channel"
    assert int8_file.stat().st_size < fp32_file.stat().st_size / 2
    assert OnnxSession(int8_file).meta["int8"] == int8  # the record travels inside the file too


def test_drop_over_the_bound_is_one_line_naming_both() -> None:
    assert check_drop(0.9012, 0.8950, 1.0) == pytest.approx(0.62)
    with pytest.raises(UserError) as e:
        check_drop(0.9012, 0.8850, 1.0)
    assert str(e.value) == (
        "max_accuracy_drop: int8 test accuracy 88.50% is 1.62 points below fp32's 90.12% (allowed 1); "
        "no int8 file written"
    )
    assert check_drop(0.9012, 0.1, None) > 80  # no bound: the bench reports whatever it costs


@pytest.mark.slow
def test_int8_drop_over_the_bound_is_refused(trained: Path, int8: dict, tmp_path: Path) -> None:
    bound = int8["drop_points"] - 0.01  # just below what quantization measurably costs this model
    out = tmp_path / "refused.int8.onnx"
    with pytest.raises(UserError) as e:
        export_int8(trained, out, images=128, max_drop=bound)
    message = str(e.value)
    assert message.startswith("max_accuracy_drop: int8 test accuracy") and "\n" not in message
    assert f"{int8['int8_accuracy']:.2%}" in message and f"{int8['fp32_accuracy']:.2%}" in message
    assert not out.exists() and not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_bench_has_every_format_and_cnn_evals_accuracies(trained: Path, int8: dict, tmp_path: Path) -> None:
    """The bench's accuracy of each file is cnn-eval's accuracy of that file, to the last digit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bench's threads=1: the same kernels, the same sums
    evaluated = {}
    try:
        for name in ("best.pt", "best.onnx", "best.int8.onnx"):
            args = (f"ckpt={trained.parent / name}", f"output_dir={tmp_path / name}", "limit_batches=20")
            assert cli("cnn-eval", *args, cwd=tmp_path).returncode == 0
            evaluated[name] = json.loads((tmp_path / name / "eval.json").read_text())["accuracy"]
    finally:
        torch.set_num_threads(threads)
    proc = cli("cnn-bench", f"ckpt={trained}", "threads=1", "latency_runs=3", "throughput_runs=2", "warmup=1",
               "limit_batches=20", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((trained.parent / "bench.json").read_text())
    records = {r["format"]: r for r in report["records"]}
    assert list(records) == list(BENCH_FORMATS)
    assert all(r["cpu"].startswith(cpu_name()) for r in report["records"])
    for fmt, name in (("pytorch", "best.pt"), ("onnx", "best.onnx"), ("onnx_int8", "best.int8.onnx")):
        r = records[fmt]
        assert r["accuracy"] == evaluated[name] and r["file"] == name, fmt
        assert r["file_bytes"] == (trained.parent / name).stat().st_size
        assert r["latency_ms_p90"] >= r["latency_ms_median"] > 0 and r["throughput_img_s"] > 0
        assert fmt in proc.stdout
    if cpu_has_fast_bf16():
        assert abs(records["pytorch_bf16"]["accuracy"] - records["pytorch"]["accuracy"]) < 0.02
    else:
        assert "native bf16" in records["pytorch_bf16"]["skipped"]
    if not torch.cuda.is_available():
        assert records["pytorch_cuda"]["skipped"] == "no CUDA device"
    html = (trained.parent / "report.html").read_text()
    assert "Formats (cnn-bench)" in html and "onnx_int8" in html


@pytest.mark.slow
def test_cnn_eval_and_cnn_bench_take_the_onnx_file(tiny: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the bench's threads=1: the same kernels, the same sums
    try:
        for name in ("best.pt", "best.onnx"):
            args = (f"ckpt={tiny.parent / name}", f"output_dir={tmp_path / name}")
            assert cli("cnn-eval", *args, cwd=tmp_path).returncode == 0
        args = (f"ckpt={tiny}", "formats=[pytorch,onnx]", "threads=1", "latency_runs=2", "throughput_runs=2",
                "warmup=0", f"output={tmp_path / 'bench.json'}")  # fmt: skip
        assert cli("cnn-bench", *args, cwd=tmp_path).returncode == 0
    finally:
        torch.set_num_threads(threads)
    evaluated = {
        name: json.loads((tmp_path / name / "eval.json").read_text()) for name in ("best.pt", "best.onnx")
    }
    assert evaluated["best.onnx"]["inference"]["runtime"] == "onnxruntime"
    assert evaluated["best.onnx"]["images"] == evaluated["best.pt"]["images"] == 100  # the whole test split
    records = json.loads((tmp_path / "bench.json").read_text())["records"]
    assert [r["format"] for r in records] == ["pytorch", "onnx"]
    assert [r["file"] for r in records] == ["best.pt", "best.onnx"] and records[1]["runtime"].startswith(
        "ONNX"
    )
    assert [r["accuracy"] for r in records] == [
        evaluated["best.pt"]["accuracy"],
        evaluated["best.onnx"]["accuracy"],
    ]
    assert not tiny.with_suffix(".int8.onnx").exists()  # only the formats asked for are made


def test_bench_rows_for_the_report(tmp_path: Path) -> None:
    """What the report's Formats section shows: one plain row per format, speed-ups against PyTorch fp32."""
    cpu = "Some CPU (avx2)"
    measured = {
        "runtime": "r",
        "latency_ms_median": 0.5,
        "latency_ms_p90": 0.75,
        "file_bytes": 2_500_000,
        "cpu": cpu,
    }
    records = [
        {**measured, "format": "pytorch", "precision": "fp32", "throughput_img_s": 100.0, "accuracy": 0.9},
        {
            **measured,
            "format": "onnx_int8",
            "precision": "int8",
            "throughput_img_s": 350.0,
            "accuracy": 0.8995,
        },
        {"format": "pytorch_cuda", "skipped": "no CUDA device", "cpu": cpu},
    ]
    (tmp_path / "bench.json").write_text(json.dumps({"cpu": cpu, "threads": 2, "records": records}))
    where, rows = bench_rows(tmp_path)
    assert (
        where == "Some CPU (avx2), 2 threads"
        and len(rows) == 3
        and all(len(r) == len(BENCH_COLUMNS) for r in rows)
    )
    assert rows[0] == ["pytorch", "r", "fp32", 0.5, 0.75, 100, 1.0, 0.9, 2.5]
    assert rows[1][5:7] == [350, 3.5] and rows[2][:2] == ["pytorch_cuda", "skipped: no CUDA device"]
    assert bench_rows(tmp_path / "elsewhere") == ("", [])


def test_onnx_predict_never_imports_torch(tiny: Path, images: Path) -> None:
    out = images / "onnx.csv"
    got, proc = probe(f"ckpt={tiny.with_suffix('.onnx')}", f"img={images}/?.png", "topk=2", f"output={out}",
                      "save_annotated=true", cwd=images)  # fmt: skip
    assert got == {"code": 0, "loaded": ["onnxruntime", "matplotlib"]}, proc.stderr
    assert len(out.read_text().splitlines()) == 7
    assert len(list(images.glob("onnx_annotated/*.png"))) == 6


@pytest.mark.slow
def test_int8_predict_never_imports_torch(trained: Path, int8: dict, images: Path) -> None:
    got, proc = probe(
        f"ckpt={trained.with_suffix('.int8.onnx')}", f"img={images}/?.png", "topk=1", cwd=images
    )
    assert got == {"code": 0, "loaded": ["onnxruntime"]}, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 7  # six rows, then the probe's line


def test_checkpoint_predict_imports_no_torchvision(tiny: Path, images: Path) -> None:
    got, proc = probe(f"ckpt={tiny}", f"img={images / '0.png'}", cwd=images)
    assert got == {"code": 0, "loaded": ["torch"]}, proc.stderr
    assert proc.stdout.startswith(str(images / "0.png"))


@pytest.mark.slow
def test_errors_come_before_any_framework(tiny: Path, images: Path) -> None:
    trained, onnx_file = tiny, tiny.with_suffix(".onnx")
    cases = {
        ("img=missing.png", f"ckpt={trained}"): "img: missing.png matches no file",
        ("img=0.png", "ckpt=nothing.pt"): "nothing.pt: no such checkpoint file",
        ("img=0.png", "ckpt=nothing.onnx"): "nothing.onnx: no such ONNX file",
        ("img=0.png", "topk=many"): "topk: value 'many' of type 'str' could not be converted to Integer",
        ("img=0.png", "colour=red"): "colour: not a key of the config (it has img, ckpt",
        ("img=0.png", f"ckpt={trained}", "output=p.txt"): "output: p.txt must end in .csv or .json",
        ("img=0.png", f"ckpt={onnx_file}", "cam=true"): "is an ONNX export; Grad-CAM needs",
        ("img=0.png", "batch_size=0"): "batch_size: 0 must be ≥ 1",
    }
    for args, expected in cases.items():
        got, proc = probe(*args, cwd=images)
        assert got == {"code": 2, "loaded": []}, (args, proc.stderr)
        assert expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)
    got, proc = probe("--help", cwd=images)
    assert got == {"code": 0, "loaded": []} and "ckpt" in proc.stdout and "topk" in proc.stdout


def fastest(command: list[str], cwd: Path, n: int = 3) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, capture_output=True, timeout=300, env={**os.environ})
        times.append(time.perf_counter() - start)
    return min(times)


def test_an_error_costs_a_small_multiple_of_a_bare_python(images: Path) -> None:
    """The console script as users run it: an argument error within 50 bare interpreter starts (~0.3 s here,
    ~20×); importing torch alone is over 80."""
    bare = fastest([sys.executable, "-c", "pass"], images)
    error = fastest([str(BIN / "cnn-predict"), "img=missing.png"], images)
    assert error < 50 * bare, (error, bare)

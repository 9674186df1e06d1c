"""cnn-export: a checkpoint as ONNX (dynamic batch) or TorchScript, checked against PyTorch on real images.

The exported network takes normalised float images and gives logits; the classes, the eval transform and
(multi-label) the per-class thresholds travel inside the file (ONNX metadata, a TorchScript extra file), so
cnn-predict can use an .onnx file like a checkpoint. The check compares logits, whichever head reads them.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from cnn_train.data.loaders import Batches
from cnn_train.data.transforms import EvalTransform, Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
META_KEY = "cnn_train"


def _needs_extra(e: ImportError) -> UserError:
    return UserError(f"format=onnx needs the export extra: pip install 'cnn-train[export]' ({e})")


def real_batch(payload: dict[str, Any], n: int = 8) -> torch.Tensor:
    """The first `n` test (else validation) images of the checkpoint's own data, as uint8."""
    data = checkpoint.dataset(payload)
    x, _ = next(
        iter(Batches(data.test or data.val, checkpoint.eval_transform(payload), n, torch.device("cpu")))
    )
    return x


def export(
    ckpt: str | Path, fmt: str, out: str | Path | None = None, tolerance: float = 1e-3
) -> tuple[Path, float]:
    """Write the export next to the checkpoint (or to `out`); returns its path and the max |difference|."""
    payload = checkpoint.load(ckpt)
    model = checkpoint.inference_model(payload, torch.device("cpu"), ckpt)
    meta = json.dumps(
        {
            "model": payload["model"],
            "classes": payload["classes"],
            "eval_transform": payload["eval_transform"],
            "multi_label": checkpoint.is_multi_label(payload),
            "thresholds": payload.get("thresholds"),
        }
    )
    images = real_batch(payload)
    preprocess = Preprocess(checkpoint.eval_transform(payload))
    x = preprocess(images)  # what the exported network takes: normalised images
    expected = infer(model, preprocess, images)  # the logits cnn-eval and cnn-predict compute
    if fmt == "onnx":
        path = Path(out) if out else Path(ckpt).with_suffix(".onnx")
        got = _export_onnx(model, x, path, meta)
    elif fmt == "torchscript":
        path = Path(out) if out else Path(ckpt).with_suffix(".ts")
        with warnings.catch_warnings(), torch.no_grad():  # TorchScript is deprecated but still what many load
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(model, x), str(path), _extra_files={f"{META_KEY}.json": meta})
            got = torch.jit.load(str(path))(x)
    else:
        raise UserError(f"format: {fmt!r} is not onnx or torchscript")
    diff = (got - expected).abs().max().item()
    if diff > tolerance:
        raise UserError(f"{path}: exported outputs differ from PyTorch by {diff:.2e} (> {tolerance:g})")
    return path, diff


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, meta: str) -> torch.Tensor:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise _needs_extra(e) from e
    with warnings.catch_warnings():  # torch's advice on its own exporter API is not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), str(path), dynamo=True, verbose=False, input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=META_KEY, value=meta)
    onnx.save(proto, str(path))
    # Batches of 1 and of the rest, neither the traced size, prove the batch dimension is dynamic.
    runner = OnnxModel(path)
    return torch.cat([runner(x[:1]), runner(x[1:])])


class OnnxModel:
    """An .onnx export behind the call signature of a network, for `inference.infer`."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as e:
            raise _needs_extra(e) from e
        try:
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnx/onnxruntime raise their own types for files they cannot read
            raise UserError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
        if META_KEY not in props:
            raise UserError(f"{path}: not exported by cnn-export (no {META_KEY} metadata)")
        meta = json.loads(props[META_KEY])
        self.classes: list[str] = meta["classes"]
        self.spec = EvalTransform.from_dict(meta["eval_transform"])
        self.multi_label: bool = bool(meta.get("multi_label", False))
        self.thresholds: list[float] | None = meta.get("thresholds")
        self.input = self.session.get_inputs()[0].name

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input: x.detach().cpu().float().numpy()})
        return torch.from_numpy(logits).to(x.device)

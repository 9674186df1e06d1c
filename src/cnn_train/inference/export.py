"""cnn-export: a checkpoint as ONNX (dynamic batch) or TorchScript, checked against PyTorch on real images.

The exported network takes normalised float images and gives logits; what the checkpoint says about
itself (classes, eval transform, the pixel order of a permuted run, the training config and, for a
multi-label run, the per-class thresholds) travels inside the file (ONNX metadata, a TorchScript extra
file), so cnn-predict and cnn-eval use an .onnx file like a checkpoint. The check compares logits.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from cnn_train.data.loaders import Batches
from cnn_train.data.permute import pixel_permutation
from cnn_train.data.preprocess import Preprocess
from cnn_train.inference import checkpoint
from cnn_train.inference.infer import infer
from cnn_train.inference.onnx_session import META_KEY, OnnxSession, needs_extra
from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
__all__ = ["META_KEY", "OnnxModel", "export", "metadata", "real_batch"]


def real_batch(payload: dict[str, Any], n: int = 8) -> torch.Tensor:
    """The first `n` test (else validation) images of the checkpoint's own data, as uint8."""
    data = checkpoint.dataset(payload)
    x, _ = next(
        iter(Batches(data.test or data.val, checkpoint.eval_transform(payload), n, torch.device("cpu")))
    )
    return x


def metadata(payload: dict[str, Any]) -> dict[str, Any]:
    """What an export carries of its checkpoint: enough to predict, and to evaluate on the data it knew."""
    meta = {k: payload[k] for k in ("model", "classes", "eval_transform", "config")}
    meta |= {"multi_label": checkpoint.is_multi_label(payload), "thresholds": payload.get("thresholds")}
    spec = checkpoint.eval_transform(payload)
    if spec.permute_seed is not None:  # the order itself: an ONNX reader without torch cannot redraw it
        meta["pixel_order"] = pixel_permutation(spec.permute_seed, spec.image_size).tolist()
    return meta


def export(
    ckpt: str | Path, fmt: str, out: str | Path | None = None, tolerance: float = 1e-3
) -> tuple[Path, float]:
    """Write the export next to the checkpoint (or to `out`); returns its path and the max |difference|."""
    if fmt not in ("onnx", "torchscript"):
        raise UserError(f"format: {fmt!r} is not onnx or torchscript")
    payload = checkpoint.load(ckpt)
    model = checkpoint.inference_model(payload, torch.device("cpu"), ckpt)
    meta = json.dumps(metadata(payload))
    images = real_batch(payload)
    preprocess = Preprocess(checkpoint.eval_transform(payload))
    x = preprocess(images)  # what the exported network takes: normalised images
    expected = infer(model, preprocess, images)  # the logits cnn-eval and cnn-predict compute
    if fmt == "onnx":
        path = Path(out) if out else Path(ckpt).with_suffix(".onnx")
        got = _export_onnx(model, x, path, meta)
    else:
        path = Path(out) if out else Path(ckpt).with_suffix(".ts")
        with warnings.catch_warnings(), torch.no_grad():  # TorchScript is deprecated but still what many load
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(torch.jit.trace(model, x), str(path), _extra_files={f"{META_KEY}.json": meta})
            got = torch.jit.load(str(path))(x)
    diff = (got - expected).abs().max().item()
    if diff > tolerance:
        raise UserError(f"{path}: exported outputs differ from PyTorch by {diff:.2e} (> {tolerance:g})")
    return path, diff


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path, meta: str) -> torch.Tensor:
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise needs_extra(e) from e
    with warnings.catch_warnings():  # torch's advice on its own exporter API is not the user's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=True,
            verbose=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            external_data=False,
        )  # fmt: skip  (one self-contained file: the classic CNNs are far below ONNX's 2 GB limit)
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=META_KEY, value=meta)
    onnx.save(proto, str(path))
    # Batches of 1 and of the rest, neither the traced size, prove the batch dimension is dynamic.
    runner = OnnxModel(path)
    return torch.cat([runner(x[:1]), runner(x[1:])])


class OnnxModel:
    """An .onnx export behind the call signature of a network, for `inference.infer`."""

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        spin: bool = False,
    ) -> None:
        self.runner = OnnxSession(path, providers, threads, spin)
        self.classes, self.spec, self.meta = self.runner.classes, self.runner.spec, self.runner.meta

    def eval(self) -> OnnxModel:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.runner.run(x.detach().cpu().float().numpy())).to(x.device)

"""Self-describing checkpoints: everything predict needs, in plain containers that weights_only reads.

Layout (nanoGPT's `model_args` idea): format, model {name, kwargs}, state_dict, classes, eval_transform,
config (resolved), epoch, metrics, multi_label and (multi-label) the per-class decision thresholds; last.pt
adds optimizer, scheduler, rng and history for resuming.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnn_train.config import DataConfig, TrainerConfig, with_defaults
from cnn_train.data.images import EvalTransform
from cnn_train.inference.inputs import DEFAULT_THRESHOLD
from cnn_train.models import build_model
from cnn_train.runtime.errors import UserError
from cnn_train.runtime.files import atomic_write

if TYPE_CHECKING:
    from cnn_train.data.datasets import Dataset

FORMAT = "cnn-train/1"
log = logging.getLogger(__name__)


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def save(path: str | Path, payload: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save keeps the previous checkpoint whole."""
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`: a file that carries code is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"{path}: refused to load: the file holds objects other than tensors and plain data "
            f"(possibly code), and only weights are read ({_first_line(e)})"
        ) from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"{path}: not a readable checkpoint ({_first_line(e)})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a cnn-train checkpoint (no '{FORMAT}' format tag)")
    return payload


def restore_model(payload: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the network from the checkpoint's own name and kwargs, then load its weights."""
    spec = payload["model"]
    model = build_model(spec["name"], **spec["kwargs"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise UserError(f"{source}: weights do not fit {spec['name']} ({_first_line(e)})") from e
    return model


def inference_model(
    payload: dict[str, Any], device: torch.device, source: str | Path = "checkpoint"
) -> nn.Module:
    """The network as every inference pass runs it (inference.infer.INFERENCE): rebuilt, fp32, contiguous, eval mode."""
    return restore_model(payload, source).to(device).eval()


def dataset(payload: dict[str, Any], data: dict[str, Any] | None = None) -> Dataset:
    """The checkpoint's own data (or `data`, a data config), split with the seed it was trained with: the
    same hold-out or fold validates, and a CSV's bad rows stop or are skipped as they were in training."""
    from cnn_train.data.datasets import load_from_config  # torchvision's datasets: predict never needs them

    config = payload.get("config", {})  # an export's metadata may lack it; then `data` is given
    cfg = with_defaults(DataConfig, data or config["data"])
    seed = with_defaults(TrainerConfig, config.get("trainer", {})).seed
    return load_from_config(cfg, seed)


def is_multi_label(payload: dict[str, Any]) -> bool:
    """Whether the checkpoint's network scores each class on its own (sigmoid) rather than one class (softmax)."""
    return bool(payload.get("multi_label", False))


def thresholds(payload: dict[str, Any]) -> list[float]:
    """A multi-label checkpoint's per-class decision thresholds (tuned on validation); 0.5 each where it has none."""
    return list(payload.get("thresholds") or [DEFAULT_THRESHOLD] * len(payload["classes"]))


def eval_transform(payload: dict[str, Any]) -> EvalTransform:
    return EvalTransform.from_dict(payload["eval_transform"])


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    """The random streams a run draws from: global torch (init, dropout, augmentation) and the shuffle."""
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resume(resume: str | None, run_dir: Path, outputs: Path) -> Path | None:
    """`auto`: this run dir's last.pt, else the newest last.pt of an unfinished run under `outputs`.

    Unset: this run dir's last.pt if its run did not finish (no results.json): a requeued or restarted job
    continues its own run.
    """
    if not resume:
        own = run_dir / "last.pt"
        return own if own.is_file() and not (run_dir / "results.json").is_file() else None
    if resume != "auto":
        path = Path(resume).expanduser()
        if not path.is_file():
            raise UserError(f"trainer.resume: {path} does not exist")
        return path
    if (run_dir / "last.pt").is_file():
        return run_dir / "last.pt"
    unfinished = [p for p in outputs.rglob("last.pt") if not (p.parent / "results.json").exists()]
    if not unfinished:
        log.info("trainer.resume=auto: no interrupted run under %s, starting fresh", outputs)
        return None
    return max(unfinished, key=lambda p: p.stat().st_mtime)

"""Checkpoints: weights in safetensors, training state beside them, each written atomically.

``<tag>.safetensors`` holds the model's tensors (no pickle, loadable anywhere); ``<tag>.state.pt``
holds the optimizer, scheduler, RNG and callback state, readable with ``weights_only=True``.
A file is written to a temporary name, fsynced and renamed, so a crash mid-write leaves the previous
checkpoint whole.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigmodel.errors import UserError


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename onto ``path``; on failure ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: Path) -> None:
    # contiguous(): channels-last kernels are strided views, and safetensors stores dense tensors.
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; was the run trained to the end of one epoch?")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); retrain or use checkpoints/last") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def save_checkpoint(directory: Path, tag: str, model: nn.Module, state: dict[str, Any] | None = None) -> Path:
    path = directory / f"{tag}.safetensors"
    if state is not None:
        atomic_write(directory / f"{tag}.state.pt", lambda tmp: torch.save(state, tmp))
    save_weights(model, path)
    return path


def load_state(directory: Path, tag: str) -> dict[str, Any]:
    path = directory / f"{tag}.state.pt"
    if not path.is_file():
        raise UserError(f"no training state at {path}; cannot resume this run")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise UserError(
            f"training state {path} is unreadable ({type(exc).__name__}); cannot resume"
        ) from None

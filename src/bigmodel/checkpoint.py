"""Checkpoints that survive crashes, full disks and bit rot.

A checkpoint ``<tag>`` is three files in ``checkpoints/``:

    <tag>.safetensors   the model's tensors (no pickle, loadable anywhere)
    <tag>.state.pt      optimizer, scheduler, scaler, every RNG, data position; read with weights_only=True
    <tag>.json          the manifest: the SHA-256 of the other two, epoch and step

Each file is written to a temporary name, fsynced and renamed, and the manifest last: a checkpoint
exists once its manifest does, and a crash or a full disk mid-write leaves every earlier one whole.
Training keeps the newest few ``step-<N>`` checkpoints and ``best``; resuming takes the newest whose
checksums match and says which damaged ones it passed over.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from bigmodel.errors import UserError
from bigmodel.files import atomic_write, sha256, write_json

STEP_TAG = re.compile(r"^step-(\d+)$")


class CheckpointWriteError(UserError):
    """The disk refused a checkpoint (full, quota, I/O error); earlier checkpoints are untouched."""


@dataclass(frozen=True)
class Checkpoint:
    directory: Path
    tag: str

    @property
    def weights(self) -> Path:
        return self.directory / f"{self.tag}.safetensors"

    @property
    def state(self) -> Path:
        return self.directory / f"{self.tag}.state.pt"

    @property
    def manifest(self) -> Path:
        return self.directory / f"{self.tag}.json"

    def files(self) -> list[Path]:
        return [self.weights, self.state, self.manifest]

    def problem(self) -> str | None:
        """Why this checkpoint cannot be trusted, or None when every checksum matches."""
        try:
            manifest = json.loads(self.manifest.read_text(encoding="utf-8"))
            expected = manifest["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            return f"{self.manifest.name} is missing or unreadable"
        for name, digest in expected.items():
            path = self.directory / name
            if not path.is_file():
                return f"{name} is missing"
            if sha256(path) != digest:
                return f"{name} does not match its checksum (truncated or corrupt)"
        return None


def save_checkpoint(
    directory: Path,
    tag: str,
    tensors: dict[str, torch.Tensor],
    state: dict[str, Any] | None = None,
    **info: Any,
) -> Checkpoint:
    """Write weights (dense CPU tensors) and training state, then the manifest that makes them a
    checkpoint."""
    ckpt = Checkpoint(directory, tag)
    try:
        atomic_write(ckpt.weights, lambda tmp: save_file(tensors, tmp))
        written = [ckpt.weights]
        if state is not None:
            atomic_write(ckpt.state, lambda tmp: torch.save(state, tmp))
            written.append(ckpt.state)
        else:
            ckpt.state.unlink(missing_ok=True)  # a best checkpoint replaced by one without state
        manifest = {"sha256": {p.name: sha256(p) for p in written}, **info}
        write_json(ckpt.manifest, manifest, indent=1)
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch and safetensors wrap the OSError
        reason = " ".join(str(exc).split())[:200]
        raise CheckpointWriteError(
            f"could not write checkpoint {ckpt.weights.parent / tag} ({type(exc).__name__}: {reason}); "
            "earlier checkpoints are intact: free disk space, then resume with --resume"
        ) from None
    return ckpt


def step_checkpoints(directory: Path) -> list[Checkpoint]:
    """The ``step-<N>`` checkpoints that have a manifest, newest first."""
    found = []
    for manifest in directory.glob("step-*.json"):
        match = STEP_TAG.match(manifest.stem)
        if match:
            found.append((int(match.group(1)), Checkpoint(directory, manifest.stem)))
    return [ckpt for _, ckpt in sorted(found, key=lambda item: item[0], reverse=True)]


def latest_good_checkpoint(directory: Path) -> Checkpoint:
    """The newest step checkpoint whose checksums match; each damaged newer one is reported."""
    candidates = step_checkpoints(directory)
    for ckpt in candidates:
        problem = ckpt.problem()
        if problem is None:
            return ckpt
        print(f"warning: skipping checkpoint {ckpt.tag}: {problem}", file=sys.stderr)
    if candidates:
        raise UserError(f"every checkpoint in {directory} is damaged; cannot resume, start a new run")
    raise UserError(f"no checkpoint in {directory}; cannot resume a run that never finished a step")


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints, and temporaries of interrupted writes."""
    for ckpt in step_checkpoints(directory)[keep:]:
        for path in ckpt.files()[::-1]:  # manifest first: a half-deleted checkpoint is no checkpoint
            path.unlink(missing_ok=True)
    for tmp in directory.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model``, checking it against its manifest when it has one."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; was the run trained to the end of one epoch?")
    ckpt = Checkpoint(path.parent, path.name.removesuffix(".safetensors"))
    if ckpt.manifest.is_file() and (problem := ckpt.problem()) is not None:
        raise UserError(f"checkpoint {path} is damaged: {problem}; retrain, or resume the run")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); retrain, or resume the run") from None
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def load_state(ckpt: Checkpoint) -> dict[str, Any]:
    try:
        return torch.load(ckpt.state, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise UserError(
            f"training state {ckpt.state} is unreadable ({type(exc).__name__}); cannot resume"
        ) from None

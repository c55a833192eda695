"""The run directory: the contract between training and everything after it.

    runs/<name>/
      config.yaml          the fully resolved config
      data.json            the DataInfo: classes, input shape, normalisation
      metrics.jsonl        one line per epoch
      report.json          final val and test metrics, time, parameter count
      checkpoints/         step-<N>.{safetensors,state.pt,json} (newest few), best.{safetensors,json}
      tokenizer/           text runs: the tokenizer, in Hugging Face format
      pretrained/          runs from model.pretrained: the Hugging Face config of what was loaded
      events.out.tfevents.*  TensorBoard

Anything that can load a run needs nothing else: not even the model.pretrained directory it started
from, which may since have been moved, deleted or pretrained again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from bigmodel.config import Config, validate_config
from bigmodel.data.bundle import DataBundle, DataInfo
from bigmodel.engine.checkpoint import atomic_write, load_weights
from bigmodel.errors import UserError
from bigmodel.models import build_model


@dataclass
class RunPaths:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_info(self) -> Path:
        return self.root / "data.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def pretrained(self) -> Path:
        return self.root / "pretrained"


def new_run_dir(name: str, out: str | Path | None, runs_root: Path = Path("runs")) -> Path:
    """``--out`` exactly (refused if it holds files), else ``runs/<name>``, numbered if taken."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(
                f"--out {path} already exists and is not empty; pick a new directory or use --resume"
            )
        return path
    path = runs_root / name
    n = 2
    while path.exists():
        path = runs_root / f"{name}-{n}"
        n += 1
    return path


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(
        path, lambda tmp: Path(tmp).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    )


def write_run_files(paths: RunPaths, cfg: Config, data: DataBundle, model: nn.Module) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.checkpoints.mkdir(exist_ok=True)
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(paths.config, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    write_json(paths.data_info, data.info.to_dict())
    if data.tokenizer is not None:
        data.tokenizer.save_pretrained(paths.tokenizer)
    if cfg.model.settings().get("pretrained") is not None:
        model.pretrained_config.save_pretrained(paths.pretrained)


def model_config(paths: RunPaths, cfg: Config) -> Config:
    """The run's config with ``model.pretrained`` pointing at the run's own copy of the loaded model's
    config: the checkpoint holds every weight, so the original directory is not needed to rebuild it."""
    if cfg.model.settings().get("pretrained") is None or not paths.pretrained.is_dir():
        return cfg
    model = cfg.model.model_copy(update={"pretrained": str(paths.pretrained)})
    return cfg.model_copy(update={"model": model})


def read_info(run: Path) -> DataInfo:
    """``data.json``: what the run's data looked like (kind, classes, input shape, normalisation)."""
    path = RunPaths(run).data_info
    if not path.is_file():
        raise UserError(f"{run} has no data.json; the run did not finish setting up")
    return DataInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))


def read_report(run: Path) -> dict[str, Any]:
    """``report.json``: the final metrics; empty for a run that has not finished."""
    path = RunPaths(run).report
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_history(run: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``: one entry per finished epoch."""
    path = RunPaths(run).metrics
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def write_history(run: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` (a resumed run: the checkpoint's history is the truth)."""
    RunPaths(run).metrics.write_text("".join(json.dumps(m) + "\n" for m in history), encoding="utf-8")


def append_history(run: Path, metrics: dict[str, Any]) -> None:
    with RunPaths(run).metrics.open("a", encoding="utf-8") as f:
        f.write(json.dumps(metrics) + "\n")


def read_config(run: Path) -> dict[str, Any]:
    paths = RunPaths(run)
    if not paths.config.is_file():
        raise UserError(
            f"{run} is not a bigmodel run directory (no config.yaml); give a directory under runs/"
        )
    return yaml.safe_load(paths.config.read_text(encoding="utf-8"))


@dataclass
class Run:
    """A finished (or interrupted) run, loaded for evaluation and prediction."""

    paths: RunPaths
    config: Config
    info: DataInfo
    model: nn.Module

    @classmethod
    def load(cls, root: str | Path, checkpoint: str = "best") -> Run:
        paths = RunPaths(Path(root))
        config = model_config(paths, validate_config(read_config(paths.root)))
        info = read_info(paths.root)
        model = build_model(config.model, info)
        load_weights(model, paths.checkpoints / f"{checkpoint}.safetensors")
        model.eval()
        return cls(paths, config, info, model)

    def encode(self, inputs: list[str]) -> dict[str, torch.Tensor]:
        """Image files (image runs) or texts (text runs) as ``model(**features)`` takes them, encoded
        exactly as the training data were."""
        if self.info.kind == "text":
            from bigmodel.data.text import prepare_texts

            return prepare_texts(inputs, self.paths.tokenizer, self.info)
        from bigmodel.data.vision import image_transform, prepare_images

        return image_transform(self.info)({"pixels": prepare_images(inputs, self.info)})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

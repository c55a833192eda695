"""The run directory: the contract between training and everything after it.

    runs/<name>/
      config.yaml          the fully resolved config
      data.json            the DataInfo: classes, input shape, normalisation
      metrics.jsonl        one line per epoch
      report.json          final val and test metrics, time, parameter count
      checkpoints/         step-<N>.{safetensors,state.pt,json} (newest few), best.{safetensors,json}
      tokenizer/           text runs: the tokenizer, in Hugging Face format
      pretrained/          runs from model.pretrained: the Hugging Face config of what was loaded
      hf/                  BERT and GPT runs: the best weights as a Hugging Face model and tokenizer
      report.html, explanations/   written by bigmodel report and bigmodel explain
      events.out.tfevents.*  TensorBoard

Anything that can load a run needs nothing else: not even the model.pretrained directory it started
from, which may since have been moved, deleted or pretrained again.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml

from bigmodel.checkpoint import load_weights
from bigmodel.config import Config, validate_config
from bigmodel.data.bundle import DataBundle, DataInfo
from bigmodel.errors import UserError
from bigmodel.files import write_json, write_text
from bigmodel.models import build_model


class RunDir:
    """One run directory: where each of its files lives, and the only code that reads or writes them.

    What it holds is read when first asked for: ``config``, ``info`` and ``model`` (the ``checkpoint``
    given, ``best`` by default, in eval mode on the CPU) are loaded once; ``history`` and ``results``
    are read afresh each time, as a run still training appends to them."""

    def __init__(self, root: str | os.PathLike[str], checkpoint: str = "best"):
        self.root = Path(root)
        self.checkpoint = checkpoint

    @classmethod
    def of(cls, run: str | os.PathLike[str] | RunDir) -> RunDir:
        """``run`` itself when it is already loaded (its model and config loaded once), else its directory."""
        return run if isinstance(run, RunDir) else cls(run)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def __fspath__(self) -> str:  # a run is its directory: open(run / "report.json"), Path(run), str(run)
        return str(self.root)

    __str__ = __fspath__

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def name(self) -> str:
        return self.root.resolve().name

    # --- where each file lives -------------------------------------------------------------------------

    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data_file(self) -> Path:
        return self.root / "data.json"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def results_file(self) -> Path:
        return self.root / "report.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def pretrained_dir(self) -> Path:
        return self.root / "pretrained"

    @property
    def hf_dir(self) -> Path:
        return self.root / "hf"

    # --- reading -----------------------------------------------------------------------------------------

    def raw_config(self) -> dict[str, Any]:
        """``config.yaml`` as written, before validation (``--resume`` applies overrides to it)."""
        if not self.config_file.is_file():
            raise UserError(
                f"{self.root} is not a bigmodel run directory (no config.yaml); give a directory under runs/"
            )
        return yaml.safe_load(self.config_file.read_text(encoding="utf-8"))

    @functools.cached_property
    def config(self) -> Config:
        """The run's config, with ``model.pretrained`` pointing at the run's own copy of the loaded
        model's config: the checkpoint holds every weight, so the original directory is not needed."""
        cfg = validate_config(self.raw_config())
        return self.own_model_config(cfg)

    def own_model_config(self, cfg: Config) -> Config:
        if cfg.model.settings().get("pretrained") is None or not self.pretrained_dir.is_dir():
            return cfg
        model = cfg.model.model_copy(update={"pretrained": str(self.pretrained_dir)})
        return cfg.model_copy(update={"model": model})

    @functools.cached_property
    def info(self) -> DataInfo:
        """``data.json``: what the run's data looked like (kind, classes, input shape, normalisation)."""
        if not self.data_file.is_file():
            raise UserError(f"{self.root} has no data.json; the run did not finish setting up")
        return DataInfo.from_dict(json.loads(self.data_file.read_text(encoding="utf-8")))

    @functools.cached_property
    def model(self) -> nn.Module:
        model = build_model(self.config.model, self.info)
        load_weights(model, self.checkpoints_dir / f"{self.checkpoint}.safetensors")
        return model.eval()

    @functools.cached_property
    def tokenizer(self) -> Any:
        """Text runs: the run's own tokenizer, loaded once (loading takes 50 ms; encoding a text, 0.1)."""
        from bigmodel.data.text import run_tokenizer

        return run_tokenizer(self.tokenizer_dir)

    @property
    def history(self) -> list[dict[str, Any]]:
        """``metrics.jsonl``: one entry per finished epoch."""
        path = self.metrics_file
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def results(self) -> dict[str, Any]:
        """``report.json``: the final metrics; empty for a run that has not finished."""
        path = self.results_file
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def encode(self, inputs: list[str]) -> dict[str, torch.Tensor]:
        """Image files (image runs) or texts (text runs) as ``model(**features)`` takes them, encoded
        exactly as the training data were."""
        if self.info.kind == "text":
            from bigmodel.data.text import prepare_texts

            return prepare_texts(inputs, self.tokenizer, self.info)
        from bigmodel.data.vision import image_transform, prepare_images

        return image_transform(self.info)({"pixels": prepare_images(inputs, self.info)})

    # --- writing -----------------------------------------------------------------------------------------

    def create(self, cfg: Config, data: DataBundle, model: nn.Module) -> None:
        """The files a run starts with: its config, its data's description, its tokenizer and, for a
        model loaded from ``model.pretrained``, that model's Hugging Face config."""
        self.checkpoints_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.config_file, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        write_json(self.data_file, data.info.to_dict())
        if data.tokenizer is not None:
            data.tokenizer.save_pretrained(self.tokenizer_dir)
        if cfg.model.settings().get("pretrained") is not None:
            model.pretrained_config.save_pretrained(self.pretrained_dir)

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_file, results)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` (a resumed run: the checkpoint's history is the truth)."""
        write_text(self.metrics_file, "".join(json.dumps(m) + "\n" for m in history))

    def append_history(self, metrics: dict[str, Any]) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(metrics) + "\n")


def new_run_dir(name: str, out: str | Path | None, runs_root: Path = Path("runs")) -> RunDir:
    """``--out`` exactly (refused if it holds files), else ``runs/<name>``, numbered if taken."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UserError(
                f"--out {path} already exists and is not empty; pick a new directory or use --resume"
            )
        return RunDir(path)
    path = runs_root / name
    n = 2
    while path.exists():
        path = runs_root / f"{name}-{n}"
        n += 1
    return RunDir(path)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

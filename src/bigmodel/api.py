"""The public workflows, one function per CLI subcommand: train (and pretrain), evaluate, predict,
generate."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.config import Config, apply_overrides, validate_config
from bigmodel.data import DataBundle
from bigmodel.engine.callbacks import Checkpoints, EarlyStopping, MetricsJsonl, ProgressBar, TensorBoard
from bigmodel.engine.checkpoint import latest_good_checkpoint, load_state, load_weights, step_checkpoints
from bigmodel.engine.device import seed_everything
from bigmodel.engine.distributed import close_world, is_peer_failure, leave_together
from bigmodel.engine.trainer import Callback, Trainer, TrainingDiverged
from bigmodel.errors import Interrupted, UserError
from bigmodel.evaluation.profile import Profile, profile_model, profile_source
from bigmodel.evaluation.report import log_test_metrics
from bigmodel.evaluation.scoring import load_with_data, run_data, split_metrics
from bigmodel.models import build_model
from bigmodel.run import (
    Run,
    RunPaths,
    count_parameters,
    model_config,
    new_run_dir,
    read_config,
    write_history,
    write_json,
    write_run_files,
)
from bigmodel.tasks import generates, task_for


def train(cfg: Config, out: str | Path | None = None) -> Path | None:
    """Train from a validated config into a new run directory; returns the directory (None on the
    ranks other than 0 of a torchrun job, which write nothing).

    Data, model and device are all built before the directory is created, so a mistake in any of
    them leaves nothing behind.
    """
    data, model = _prepare(cfg)
    trainer = None
    try:
        trainer = Trainer(model, data, cfg)  # joins the torchrun job, if any
        paths = RunPaths(new_run_dir(cfg.name or "run", out)) if trainer.world.is_main else None
        trainer.callbacks = default_callbacks(cfg, paths)
        if paths is not None:
            write_run_files(paths, cfg, data, model)
        try:
            run = _fit_and_report(trainer, paths)
        except BaseException:
            if paths is not None and not step_checkpoints(paths.checkpoints):
                shutil.rmtree(paths.root)  # nothing worth keeping: leave no half-written run behind
            raise
        leave_together()
        return run
    finally:
        del trainer, model  # the DDP model goes before the process group (see close_world)
        close_world()


def resume(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Path | None:
    """Continue a run from its newest intact checkpoint, mid-epoch if that is where it stopped
    (overrides may, e.g., raise ``train.epochs``)."""
    paths = RunPaths(Path(run))
    original = validate_config(read_config(paths.root))
    cfg = validate_config(apply_overrides(read_config(paths.root), overrides))
    frozen = {"data": (original.data, cfg.data), "model": (original.model, cfg.model)}
    frozen["optim.name"] = (original.optim.name, cfg.optim.name)
    for key, (was, now) in frozen.items():
        if was != now:
            raise UserError(
                f"{key} cannot change on --resume (the checkpoint depends on it); start a new run"
            )
    ckpt = latest_good_checkpoint(paths.checkpoints)
    state = load_state(ckpt)
    data, model = _prepare(cfg, paths)
    load_weights(model, ckpt.weights)
    trainer = None
    try:
        trainer = Trainer(model, data, cfg)
        main = trainer.world.is_main
        trainer.callbacks = default_callbacks(cfg, paths if main else None)
        trainer.load_state_dict(state)
        if main:
            # Epochs after the checkpoint may have been logged before a crash: the checkpoint is the truth.
            write_history(paths.root, trainer.history)
            write_run_files(paths, cfg, data, model)
            where = f"the end of epoch {trainer.epoch}"
            if trainer.batch_in_epoch:
                where = f"epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}"
            print(f"resuming {paths.root} from {ckpt.tag} (step {trainer.step}, {where})", file=sys.stderr)
        run = _fit_and_report(trainer, paths if main else None)
        leave_together()
        return run
    finally:
        del trainer, model  # the DDP model goes before the process group (see close_world)
        close_world()


def _prepare(cfg: Config, run: RunPaths | None = None) -> tuple[DataBundle, nn.Module]:
    """Data and model of a new run, or of an existing ``run`` as it saw them (its own tokenizer, and
    its own copy of the pretrained model's config)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    data = run_data(cfg, run)
    model_cfg = model_config(run, cfg).model if run is not None else cfg.model
    return data, build_model(model_cfg, data.info)


def default_callbacks(cfg: Config, paths: RunPaths | None) -> list[Callback]:
    """Checkpoints and early stopping on every rank (they take part in collectives and must agree on
    when to stop); the writers only where there is a run directory, rank 0."""
    tc = cfg.train
    callbacks: list[Callback] = [
        Checkpoints(paths.checkpoints if paths else None, tc.checkpoint_every, tc.keep_checkpoints)
    ]
    if tc.early_stopping.patience:
        callbacks.append(EarlyStopping(tc.early_stopping.patience, tc.early_stopping.min_delta))
    if paths is not None:
        callbacks += [MetricsJsonl(paths.root), TensorBoard(paths.root)]
        if tc.progress:
            callbacks.append(ProgressBar())
    return callbacks


def _fit_and_report(trainer: Trainer, paths: RunPaths | None) -> Path | None:
    try:
        trainer.fit()
    except RuntimeError as exc:
        if not is_peer_failure(exc):
            raise
        reason = str(exc).strip().splitlines()[0].split("] ", 1)[-1].split(". ")[0][:160]
        run = paths.root if paths is not None else "RUN"
        raise UserError(
            f"rank {trainer.world.rank} stops: another process of this torchrun job failed ({reason}); "
            f"torchrun's summary below names it; continue with: bigmodel train --resume {run}"
        ) from None
    except (TrainingDiverged, Interrupted) as exc:
        if paths is None:
            raise
        newest = step_checkpoints(paths.checkpoints)
        kept = f"checkpoint {newest[0].tag} (epoch {trainer.epoch})" if newest else "no checkpoint"
        if isinstance(exc, Interrupted):
            resume = f"bigmodel {trainer.task.command} --resume {paths.root}"
            raise Interrupted(f"{exc}; saved {kept}; continue with: {resume}", exc.signum) from None
        raise TrainingDiverged(f"{exc}; {kept} is kept") from None
    if paths is None:
        return None  # rank 0 reports
    print(f"stopped: {trainer.stop_reason}", file=sys.stderr)
    best = Run.load(paths.root)  # the best checkpoint as saved: exactly what evaluate and predict load
    val, test = (
        split_metrics(best.model, trainer.data, s, trainer.cfg, trainer.device, trainer.dtype)
        for s in ("val", "test")
    )
    history = trainer.history
    report = {
        "test": test,
        "val": val,
        "train_seconds": history[-1]["elapsed_seconds"] if history else 0.0,
        "params": count_parameters(best.model),
        "epochs": trainer.epoch,
        "best_epoch": next(cb.best_epoch for cb in trainer.callbacks if isinstance(cb, Checkpoints)),
        "stop_reason": trainer.stop_reason,
        "device": str(trainer.device),
        "precision": str(trainer.dtype).removeprefix("torch."),
        "processes": trainer.world.size,
        "samples_per_s_median": _median([h["train/samples_per_s"] for h in history]),
    }
    write_json(paths.report, report)
    log_test_metrics(paths.root, test, trainer.data.info.classes, trainer.epoch)
    if best.model.exports_hf:
        export_hf(best, trainer.data.tokenizer)
    return paths.root


def export_hf(run: Run, tokenizer: Any) -> Path:
    """``RUN/hf/``: the best weights as a Hugging Face model and its tokenizer (``save_pretrained``), so
    ``AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read it unchanged."""
    out = run.paths.root / "hf"
    hf = run.model.hf
    if tokenizer.cls_token_id is not None:  # our tokenizers open each text with [CLS], close with [SEP]
        for config in (hf.config, getattr(hf, "generation_config", None)):
            if config is None:
                continue
            config.bos_token_id, config.eos_token_id = tokenizer.cls_token_id, tokenizer.sep_token_id
            config.pad_token_id = tokenizer.pad_token_id
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for writing one file is noise
    hf.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median()) if values else 0.0


def evaluate(run: str | Path, split: str = "test") -> dict[str, Any]:
    """Metrics of a run's best checkpoint on one split of its data (rebuilt from its config)."""
    loaded, data, device, dtype = load_with_data(run)
    return split_metrics(loaded.model, data, split, loaded.config, device, dtype)


def predict(run: str | Path, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each input: image files for image runs, texts for text runs."""
    loaded = Run.load(run)
    task = task_for(loaded.info)
    task.require_classifier(run, "predict")
    features = loaded.encode(inputs)
    with torch.inference_mode():
        probs = torch.softmax(task.output(loaded.model, features).logits.float(), dim=1)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [
        {
            "input": name,
            "top": [
                {"class": loaded.info.classes[int(i)], "probability": float(p)}
                for p, i in zip(top.values[row], top.indices[row], strict=True)
            ],
        }
        for row, name in enumerate(inputs)
    ]


def profile(
    target: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    batch_size: int | None = None,
    steps: int = 20,
) -> Profile:
    """What training a config (a YAML file, the default, or a run directory's) costs: parameters, FLOPs,
    activation memory, measured speed, MFU and the top operators, on one real training batch. Builds the
    data and model as ``train`` does; trains nothing and writes no run (see evaluation/profile.py)."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    cfg, paths = profile_source(target, overrides, batch_size)
    data, model = _prepare(cfg, paths)
    return profile_model(model, data, cfg, steps)


def explain(
    run: str | Path,
    inputs: list[str],
    out: str | Path | None = None,
    target: str | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
) -> list[tuple[Any, list[Path]]]:
    """Attributions for each input (image files or texts, as for predict), drawn into ``out`` (default
    ``RUN/explanations``); returns each ``Explanation`` with the files written for it."""
    from bigmodel.evaluation.explain import explain_to_files

    loaded = Run.load(run)
    folder = Path(out) if out is not None else loaded.paths.root / "explanations"
    return explain_to_files(loaded, inputs, folder, target, method, steps)


def generate(
    run: str | Path,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` with a causal LM run, sampling through Hugging Face's ``generate``; the same
    seed gives the same text. ``temperature=0`` picks the likeliest token at each step."""
    loaded = Run.load(run)
    if not generates(task_for(loaded.info)):
        raise UserError(
            f"{run} is not a causal language model; generate needs a run pretrained with "
            "data.objective=clm (e.g. bigmodel pretrain configs/gpt-imdb.yaml)"
        )
    context = loaded.info.input_shape[0]
    checks = {
        "--max-new-tokens": (
            0 < max_new_tokens < context,
            f"between 1 and {context - 1}, the context length",
        ),
        "--temperature": (temperature >= 0, "0 (greedy) or more"),
        "--top-k": (top_k >= 0, "0 (off) or more"),
        "--top-p": (0 < top_p <= 1, "in (0, 1]"),
    }
    for flag, (ok, allowed) in checks.items():
        if not ok:
            raise UserError(f"{flag} must be {allowed}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(loaded.paths.tokenizer))
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.cls_token_id is not None:
        ids = [tokenizer.cls_token_id, *ids]  # how every training text began
    ids = ids[-(context - max_new_tokens) :]  # the model reads at most `context` positions
    input_ids = torch.tensor([ids])
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = loaded.model.hf.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or None,
            top_k=top_k or None,
            top_p=top_p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.sep_token_id,
        )
    return tokenizer.decode(out[0], skip_special_tokens=True)

"""The public workflows, one function per CLI subcommand: train (and pretrain), evaluate, predict,
generate."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.config import Config, apply_overrides, validate_config
from bigmodel.data import BatchLoader, DataBundle, build_data
from bigmodel.engine.callbacks import Checkpoints, EarlyStopping, MetricsJsonl, ProgressBar, TensorBoard
from bigmodel.engine.checkpoint import latest_good_checkpoint, load_state, load_weights, step_checkpoints
from bigmodel.engine.device import resolve_device, resolve_precision, seed_everything
from bigmodel.engine.distributed import close_world, is_peer_failure, leave_together
from bigmodel.engine.trainer import (
    LANGUAGE_MODELLING,
    Callback,
    Trainer,
    TrainingDiverged,
    eval_loader,
    language_model_eval,
    predict_logits,
)
from bigmodel.errors import Interrupted, UserError
from bigmodel.evaluation.metrics import classification_metrics, language_model_metrics
from bigmodel.evaluation.profile import Profile, profile_model, profile_source
from bigmodel.evaluation.report import log_test_metrics
from bigmodel.models import build_model
from bigmodel.run import (
    Run,
    RunPaths,
    count_parameters,
    model_config,
    new_run_dir,
    read_config,
    write_json,
    write_run_files,
)


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
        trainer.callbacks = _callbacks(cfg, paths)
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
        trainer.callbacks = _callbacks(cfg, paths if main else None)
        trainer.load_state_dict(state)
        if main:
            # Epochs after the checkpoint may have been logged before a crash: the checkpoint is the truth.
            paths.metrics.write_text("".join(json.dumps(m) + "\n" for m in trainer.history), encoding="utf-8")
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
    data = _build_run_data(cfg, run)
    model_cfg = model_config(run, cfg).model if run is not None else cfg.model
    return data, build_model(model_cfg, data.info)


def _build_run_data(cfg: Config, run: RunPaths | None) -> DataBundle:
    """The data as the run saw it: an existing run's own tokenizer, never a retrained one."""
    if run is not None and run.tokenizer.is_dir():
        return build_data(cfg.data.model_copy(update={"tokenizer": str(run.tokenizer)}))
    return build_data(cfg.data)


def _callbacks(cfg: Config, paths: RunPaths | None) -> list[Callback]:
    """Checkpoints and early stopping on every rank (they take part in collectives and must agree on
    when to stop); the writers only where there is a run directory, rank 0."""
    tc = cfg.train
    callbacks: list[Callback] = [
        Checkpoints(paths.checkpoints if paths else None, tc.checkpoint_every, tc.keep_checkpoints)
    ]
    if tc.early_stopping.patience:
        callbacks.append(EarlyStopping(tc.early_stopping.patience, tc.early_stopping.min_delta))
    if paths is not None:
        callbacks += [MetricsJsonl(paths.metrics), TensorBoard(paths.root)]
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
            command = "pretrain" if trainer.data.info.kind in LANGUAGE_MODELLING else "train"
            resume = f"bigmodel {command} --resume {paths.root}"
            raise Interrupted(f"{exc}; saved {kept}; continue with: {resume}", exc.signum) from None
        raise TrainingDiverged(f"{exc}; {kept} is kept") from None
    if paths is None:
        return None  # rank 0 reports
    print(f"stopped: {trainer.stop_reason}", file=sys.stderr)
    best = Run.load(paths.root)  # the best checkpoint as saved: exactly what evaluate and predict load
    val, test = (
        _metrics(best.model, trainer.data, s, trainer.cfg, trainer.device, trainer.dtype)
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
    if hasattr(best.model, "hf"):
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
    loaded, data, device, dtype = _load_with_data(run)
    return _metrics(loaded.model, data, split, loaded.config, device, dtype)


def split_logits(run: str | Path, split: str = "test") -> tuple[Run, DataBundle, torch.Tensor, torch.Tensor]:
    """A classifier run's best checkpoint, its rebuilt data, and the logits and labels of one split: for
    tools that need more than the metrics (the report's mistakes and calibration)."""
    loaded, data, device, dtype = _load_with_data(run)
    loader = _loader(data, split, loaded.config)
    logits, labels = predict_logits(loaded.model.to(device), loader, device, dtype)
    return loaded, data, logits, labels


def _load_with_data(run: str | Path) -> tuple[Run, DataBundle, torch.device, torch.dtype]:
    """The best checkpoint, the data as it saw it, and the device and precision its config asks for."""
    loaded = Run.load(run)
    data = _build_run_data(loaded.config, loaded.paths)
    if data.info.classes != loaded.info.classes:  # labels are positions in this list: order matters too
        unseen = [c for c in data.info.classes if c not in loaded.info.classes]
        raise UserError(
            f"the data now has classes the run never trained on ({', '.join(unseen) or 'a different set'}); "
            f"the run knows {', '.join(loaded.info.classes)}"
        )
    device = resolve_device(loaded.config.train.device)
    return loaded, data, device, resolve_precision(loaded.config.train.precision, device)


def _metrics(
    model: nn.Module, data: DataBundle, split: str, cfg: Config, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    loader = _loader(data, split, cfg)
    if data.info.kind in LANGUAGE_MODELLING:
        return language_model_metrics(language_model_eval(model.to(device), loader, device, dtype))
    logits, labels = predict_logits(model.to(device), loader, device, dtype)
    return classification_metrics(logits, labels, data.info.classes)


def _loader(data: DataBundle, split: str, cfg: Config) -> BatchLoader:
    return eval_loader(data.split(split), data, cfg.train)


def predict(run: str | Path, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each input: image files for image runs, texts for text runs."""
    loaded = Run.load(run)
    if loaded.info.kind in LANGUAGE_MODELLING:
        raise UserError(
            f"{run} is a pretrained language model, not a classifier: continue text with bigmodel generate "
            "(clm), or fine-tune it with model.name=bert model.pretrained=RUN/hf (mlm)"
        )
    features = loaded.encode(inputs)
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(**features).float(), dim=1)
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
    if loaded.info.kind != "clm":
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

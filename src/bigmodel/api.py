"""The public workflows, for Python as for the command line (one function per CLI subcommand):

import bigmodel
run = bigmodel.train("configs/fashion-cnn.yaml", ["train.epochs=3"], model=MyNet)
run.evaluate()["accuracy"]; run.predict(["shoe.png"]); run.explain(["shoe.png"]); run.report()
run = bigmodel.load("runs/fashion-cnn")   # any run directory, later
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.checkpoint import latest_good_checkpoint, load_state, load_weights, step_checkpoints
from bigmodel.config import Config, apply_overrides, load_config, validate_config
from bigmodel.data import DataBundle
from bigmodel.deploy import batch
from bigmodel.device import seed_everything
from bigmodel.engine.callbacks import Checkpoints, EarlyStopping, MetricsJsonl, ProgressBar, TensorBoard
from bigmodel.engine.distributed import close_world, is_peer_failure, leave_together
from bigmodel.engine.trainer import Callback, Trainer, TrainingDiverged
from bigmodel.errors import Interrupted, UserError
from bigmodel.evaluation.profile import Profile, profile_model, profile_source
from bigmodel.evaluation.report import log_test_metrics
from bigmodel.evaluation.scoring import load_with_data, run_data, split_metrics
from bigmodel.models import build_model
from bigmodel.models.custom import give_user_model
from bigmodel.models.output import Model
from bigmodel.run import RunDir, count_parameters, new_run_dir
from bigmodel.tasks import generates, task_for


class Run(RunDir):
    """A run directory with the workflows as methods: what ``bigmodel.train`` and ``bigmodel.load``
    return. ``config``, ``info``, ``model`` (the best checkpoint), ``history`` and ``results`` (the
    final metrics) come from ``RunDir``."""

    def evaluate(self, split: str = "test") -> dict[str, Any]:
        return evaluate(self, split)

    def predict(self, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
        return predict(self, inputs, top_k)

    def explain(self, inputs: list[str], out: str | Path | None = None, **options: Any) -> list[Any]:
        return explain(self, inputs, out, **options)

    def report(self, out: str | Path | None = None, mistakes: int = 8) -> Path:
        from bigmodel.evaluation.report import build_report

        return build_report(self, Path(out) if out is not None else None, mistakes)

    def generate(self, prompt: str, **options: Any) -> str:
        return generate(self, prompt, **options)

    def export(self, out: str | Path | None = None, **options: Any) -> tuple[Path, dict[str, Any]]:
        return export(self, out, **options)


def load(run: str | Path, model: Any = None, checkpoint: str = "best") -> Run:
    """A run directory, to evaluate, predict, explain or report on. ``model`` is the class or builder of
    a run trained on a model of your own that no file holds (one defined in a notebook)."""
    loaded = Run(run, checkpoint)
    loaded.raw_config()  # refuses a directory that is not a run, now rather than at first use
    if model is not None:
        give_user_model(model, loaded.config.model.name)
    return loaded


def train(
    config: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    model: Any = None,
    out: str | Path | None = None,
    callbacks: list[Callback] | tuple[Callback, ...] = (),
    score_test: bool = True,
    data: DataBundle | None = None,
) -> Run | None:
    """Train into a new run directory and return it (None on the ranks other than 0 of a torchrun job,
    which write nothing). ``config`` is a YAML file, a mapping or a ``Config`` (default: Fashion-MNIST
    with the built-in CNN); ``overrides`` are ``section.key=value`` strings, as on the command line;
    ``model`` (an ``nn.Module`` subclass or a function returning one) replaces the config's model, its
    arguments set as ``model.<name>=value`` overrides. ``callbacks`` observe the loop beside the usual
    ones; ``score_test=False`` leaves the test split unread (a tuning trial: see ``bigmodel.tune``);
    ``data`` is the bundle ``build_data`` made for this config's data section, reused across runs.

    Data, model and device are all built before the directory is created, so a mistake in any of
    them leaves nothing behind.
    """
    cfg = load_config(config, overrides, give_user_model(model) if model is not None else None)
    data, built = _prepare(cfg, data=data)
    if isinstance(built, Model):
        built.fit_data(data.train)  # a resumed or loaded run has them in its weights
    trainer = None
    try:
        trainer = Trainer(built, data, cfg)  # joins the torchrun job, if any
        run = Run(new_run_dir(cfg.name or "run", out).root) if trainer.world.is_main else None
        trainer.callbacks = default_callbacks(cfg, run) + list(callbacks)
        if run is not None:
            run.create(cfg, data, built)
        try:
            _fit_and_report(trainer, run, score_test)
        except BaseException:
            if run is not None and not step_checkpoints(run.checkpoints_dir):
                shutil.rmtree(run.root)  # nothing worth keeping: leave no half-written run behind
            raise
        leave_together()
        return run
    finally:
        del trainer, built  # the DDP model goes before the process group (see close_world)
        close_world()


def resume(run: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Run | None:
    """Continue a run from its newest intact checkpoint, mid-epoch if that is where it stopped
    (overrides may, e.g., raise ``train.epochs``)."""
    run = Run(run)
    original = validate_config(run.raw_config())
    cfg = validate_config(apply_overrides(run.raw_config(), overrides))
    frozen = {"data": (original.data, cfg.data), "model": (original.model, cfg.model)}
    frozen["optim.name"] = (original.optim.name, cfg.optim.name)
    for key, (was, now) in frozen.items():
        if was != now:
            raise UserError(
                f"{key} cannot change on --resume (the checkpoint depends on it); start a new run"
            )
    ckpt = latest_good_checkpoint(run.checkpoints_dir)
    state = load_state(ckpt)
    data, model = _prepare(cfg, run)
    load_weights(model, ckpt.weights)
    trainer = None
    try:
        trainer = Trainer(model, data, cfg)
        main = trainer.world.is_main
        trainer.callbacks = default_callbacks(cfg, run if main else None)
        trainer.load_state_dict(state)
        if main:
            # Epochs after the checkpoint may have been logged before a crash: the checkpoint is the truth.
            run.write_history(trainer.history)
            run.create(cfg, data, model)
            where = f"the end of epoch {trainer.epoch}"
            if trainer.batch_in_epoch:
                where = f"epoch {trainer.epoch + 1}, batch {trainer.batch_in_epoch}"
            print(f"resuming {run.root} from {ckpt.tag} (step {trainer.step}, {where})", file=sys.stderr)
        _fit_and_report(trainer, run if main else None)
        leave_together()
        return run if main else None
    finally:
        del trainer, model  # the DDP model goes before the process group (see close_world)
        close_world()


def _prepare(
    cfg: Config, run: RunDir | None = None, data: DataBundle | None = None
) -> tuple[DataBundle, nn.Module]:
    """Data and model of a new run, or of an existing ``run`` as it saw them (its own tokenizer, and
    its own copy of the pretrained model's config)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    data = data if data is not None else run_data(cfg, run)
    model_cfg = run.own_model_config(cfg).model if run is not None else cfg.model
    return data, build_model(model_cfg, data.info)


def default_callbacks(cfg: Config, run: RunDir | None) -> list[Callback]:
    """Checkpoints and early stopping on every rank (they take part in collectives and must agree on
    when to stop); the writers only where there is a run directory, rank 0."""
    tc = cfg.train
    callbacks: list[Callback] = [
        Checkpoints(run.checkpoints_dir if run else None, tc.checkpoint_every, tc.keep_checkpoints)
    ]
    if tc.early_stopping.patience:
        callbacks.append(EarlyStopping(tc.early_stopping.patience, tc.early_stopping.min_delta))
    if run is not None:
        callbacks += [MetricsJsonl(run), TensorBoard(run.root)]
        if tc.progress:
            callbacks.append(ProgressBar())
    return callbacks


def _fit_and_report(trainer: Trainer, run: RunDir | None, score_test: bool = True) -> None:
    try:
        trainer.fit()
    except RuntimeError as exc:
        if not is_peer_failure(exc):
            raise
        reason = str(exc).strip().splitlines()[0].split("] ", 1)[-1].split(". ")[0][:160]
        where = run.root if run is not None else "RUN"
        raise UserError(
            f"rank {trainer.world.rank} stops: another process of this torchrun job failed ({reason}); "
            f"torchrun's summary below names it; continue with: bigmodel train --resume {where}"
        ) from None
    except (TrainingDiverged, Interrupted) as exc:
        if run is None:
            raise
        newest = step_checkpoints(run.checkpoints_dir)
        kept = f"checkpoint {newest[0].tag} (epoch {trainer.epoch})" if newest else "no checkpoint"
        if isinstance(exc, Interrupted):
            resume = f"bigmodel {trainer.task.command} --resume {run.root}"
            raise Interrupted(f"{exc}; saved {kept}; continue with: {resume}", exc.signum) from None
        raise TrainingDiverged(f"{exc}; {kept} is kept") from None
    if run is None:
        return  # rank 0 reports
    print(f"stopped: {trainer.stop_reason}", file=sys.stderr)
    best = RunDir(run.root)  # the best checkpoint as saved: exactly what evaluate and predict load
    scored = {
        split: split_metrics(best.model, trainer.data, split, trainer.cfg, trainer.device, trainer.dtype)
        for split in (("test", "val") if score_test else ("val",))
    }
    history = trainer.history
    report = {
        **scored,
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
    run.write_results(report)
    if score_test:
        log_test_metrics(run.root, scored["test"], trainer.data.info.classes, trainer.epoch)
    if best.model.exports_hf:
        export_hf(best, trainer.data.tokenizer)


def export_hf(run: RunDir, tokenizer: Any) -> Path:
    """``RUN/hf/``: the best weights as a Hugging Face model and its tokenizer (``save_pretrained``), so
    ``AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read it unchanged."""
    out = run.hf_dir
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


def evaluate(run: str | Path | RunDir, split: str = "test") -> dict[str, Any]:
    """Metrics of a run's best checkpoint on one split of its data (rebuilt from its config)."""
    loaded, data, device, dtype = load_with_data(run)
    return split_metrics(loaded.model, data, split, loaded.config, device, dtype)


def predict(run: str | Path | RunDir, inputs: list[str], top_k: int = 3) -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each input: image files for image runs, texts for text runs."""
    loaded = _loaded(run)
    task_for(loaded.info).require_classifier(loaded.root, "predict")
    tops = batch.top_classes(loaded, loaded.encode(inputs), top_k)
    return [{"input": name, "top": top} for name, top in zip(inputs, tops, strict=True)]


def predict_file(
    run: str | Path | RunDir,
    source: str | Path,
    output: str | Path,
    top_k: int = 3,
    batch_size: int = batch.BATCH_SIZE,
    progress: bool = True,
) -> batch.BatchSummary:
    """``predict`` for inputs of any number, in batches with bounded memory: every text of a CSV, TSV or
    JSONL file (a text run; the run's ``data.text_column``, an ``id`` column naming each) or every image
    under a folder (an image run; named by its path), one JSON line each, ``{"id": ..., "top": [...]}``,
    into ``output``, which is written whole or not at all."""
    return batch.predict_file(_loaded(run), Path(source), Path(output), top_k, batch_size, progress)


def export(
    run: str | Path | RunDir, out: str | Path | None = None, fmt: str = "onnx", quantize: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """The run's best model as ONNX in ``out`` (default ``RUN/export``), behind a parity gate against
    PyTorch; ``quantize="int8"`` adds an int8 model with the test accuracy before and after. Returns the
    directory and its export.json."""
    from bigmodel.deploy.export import export_run

    return export_run(_loaded(run), out, fmt, quantize)


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
    run: str | Path | RunDir,
    inputs: list[str],
    out: str | Path | None = None,
    target: str | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
) -> list[tuple[Any, list[Path]]]:
    """Attributions for each input (image files or texts, as for predict), drawn into ``out`` (default
    ``RUN/explanations``); returns each ``Explanation`` with the files written for it."""
    from bigmodel.evaluation.explain import explain_to_files

    loaded = _loaded(run)
    folder = Path(out) if out is not None else loaded.root / "explanations"
    return explain_to_files(loaded, inputs, folder, target, method, steps)


def generate(
    run: str | Path | RunDir,
    prompt: str,
    max_new_tokens: int = 50,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int = 0,
) -> str:
    """Continue ``prompt`` with a causal LM run, sampling through Hugging Face's ``generate``; the same
    seed gives the same text. ``temperature=0`` picks the likeliest token at each step."""
    loaded = _loaded(run)
    if not generates(task_for(loaded.info)):
        raise UserError(
            f"{loaded.root} is not a causal language model; generate needs a run pretrained with "
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

    tokenizer = AutoTokenizer.from_pretrained(str(loaded.tokenizer_dir))
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


def serve(
    run: str | Path | RunDir,
    backend: str = "torch",
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    max_batch: int = 64,
    max_wait_ms: float = 0.0,
    max_inputs: int = 64,
    max_body_mb: float = 8.0,
    on_ready: Any = None,
) -> None:
    """Serve the run over HTTP (FastAPI on uvicorn; routes in ``bigmodel.deploy.serve``) until Ctrl-C.
    ``backend``: ``torch`` or ``onnx`` (exported first if ``RUN/export`` has no export); ``token``
    (default: the environment's ``BIGMODEL_TOKEN``) guards every route but /health; ``on_ready(url)`` is
    called once the warm-up inference has run. Mistakes in the run or the settings are raised before the
    port is bound."""
    import os

    from bigmodel.deploy.serve import ServeSettings, create_app, run_server

    # oneDNN keeps a compiled kernel for each input shape it meets, up to 1,024 by default: a server sees
    # a new (batch, length) with almost every pass, and its memory grew with them (+22 % over a 40,000
    # request soak). Sixteen kept cost no measurable speed. Read when oneDNN first runs, so set here.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
    token = token if token is not None else os.environ.get("BIGMODEL_TOKEN") or None
    settings = ServeSettings(max_batch, max_wait_ms, max_inputs, max_body_mb, token=token)
    app = create_app(run, backend, settings, generate=generate)
    run_server(app, host, port, on_ready)


def _loaded(run: str | Path | RunDir) -> RunDir:
    """A run as given (its model loaded once), or a directory's, with the model on the CPU, where
    predict, explain and generate encode their inputs (evaluate may have moved it to a GPU)."""
    loaded = RunDir.of(run)
    loaded.model.cpu()
    return loaded

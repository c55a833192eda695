"""What a model costs to run, counted and measured on one real training batch (``bigmodel profile``).

    FLOPs           FlopCounterMode over one forward and one backward pass
    activations     bytes saved for backward in one forward pass (saved_tensors_hooks)
    speed           real optimizer steps as the loop takes them (autocast, channels-last, the config's
                    optimizer), median over steps; inference under inference_mode
    MFU             achieved FLOP/s over this machine's measured matmul peak in the dtype in use
    where time goes a short torch.profiler trace of a few steps, top operators by self time

Nothing is trained for real and nothing is written, except the matmul peak, cached per machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from bigmodel.config import Config, apply_overrides, load_config, validate_config
from bigmodel.data import BatchLoader, DataBundle
from bigmodel.data.loader import Batch, model_inputs, move
from bigmodel.device import autocast, cpu_has_native_bf16
from bigmodel.engine.trainer import Trainer
from bigmodel.errors import UserError
from bigmodel.files import write_json
from bigmodel.run import RunDir

PEAK_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bigmodel" / "matmul_peak.json"
)
WARMUP_STEPS = 3  # the first steps allocate gradients and optimizer state, and warm up the allocator
TRACE_STEPS = 3  # steps under torch.profiler
PHASES = ("move", "forward", "backward", "bookkeeping", "optimizer")  # one training step, in order
LABEL = "bigmodel.{}"  # the profiler's name for a phase
aten = torch.ops.aten


# ---------------------------------------------------------------------------------------- counting


def _rnn_layer_flops(input_shape: Any, w_ih: Any, w_hh: Any, *args: Any, **kwargs: Any) -> int:
    """One direction of one LSTM layer: per timestep and example, x @ W_ih.T and h @ W_hh.T."""
    steps_times_batch = math.prod(input_shape) // w_ih[1]
    return 2 * steps_times_batch * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])


# PyTorch's own table misses the kernels the CPU picks: SDPA's flash attention for the CPU, and oneDNN's
# LSTM layer (a GRU decomposes into matmuls and is counted anyway). Backward: twice the forward's
# matmuls for the LSTM; SDPA's as PyTorch counts it for the GPU kernels.
CPU_KERNELS = {
    aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
        sdpa_flop_count(q, k, v)
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: lambda g, q, k, v, *a, out_shape=None, **kw: (
        sdpa_backward_flop_count(g, q, k, v)
    ),
    aten.mkldnn_rnn_layer: lambda *a, out_shape=None, **kw: _rnn_layer_flops(*a),
    aten.mkldnn_rnn_layer_backward: lambda *a, out_shape=None, **kw: 2 * _rnn_layer_flops(*a),
}


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=CPU_KERNELS)


@torch.inference_mode()
def forward_flops(model: nn.Module, features: dict[str, torch.Tensor]) -> int:
    """FLOPs of ``model(**features)``, counted rather than estimated so every architecture is measured
    the same way: matrix multiplications, convolutions and attention, two per multiply-add (elementwise
    operations are not counted)."""
    device = next(model.parameters()).device
    counter = flop_counter()
    with counter:
        model(**{name: value.to(device) for name, value in features.items()})
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ result


@dataclass
class Profile:
    """Per-example numbers divide the batch's by its size; times are medians over the measured steps."""

    name: str
    model: str
    data: str
    kind: str  # the DataInfo kind: image, text, mlm or clm
    input_shape: list[int]  # one example's: [channels, height, width], or [max_length] tokens
    device: str
    precision: str  # the autocast dtype: float32 means autocast off
    threads: int
    batch_size: int
    sequence_length: int | None  # text: the batch's own length (each batch is trimmed to its longest)
    tokens_per_batch: int | None  # text: real (unpadded) tokens
    params: int
    trainable_params: int
    weights_mb: float  # parameters and buffers
    optimizer_state_mb: float
    forward_flops: float  # per example
    train_flops: float  # per example: forward and backward
    activation_bytes: int  # per batch, saved for backward
    activation_bytes_per_example: float
    loader_ms: float  # drawing one training batch: slicing, augmentation or masking, on the host
    steps: int
    train_step_ms: float
    train_examples_per_s: float
    train_tokens_per_s: float | None
    inference_ms: float
    inference_examples_per_s: float
    inference_tokens_per_s: float | None
    achieved_gflops: float  # training FLOPs per example × training examples/s
    peak_gflops: float  # this machine's matmul, in the precision in use
    peak_matmul: str  # how the peak was measured
    mfu: float
    phases_ms: dict[str, float]  # traced milliseconds per step in each part of a training step
    top_ops: list[dict[str, Any]]  # by self CPU time, per traced step
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """The profile as a page of aligned text."""
        n = self.batch_size
        if self.sequence_length is None:
            shape = f"{self.kind} {'×'.join(map(str, self.input_shape))}"
        else:
            shape = f"{self.kind}, up to {self.input_shape[0]} tokens"
        at = f" at the batch's {self.sequence_length} tokens" if self.sequence_length else ""
        tokens = lambda rate: f", {rate:,.0f} tokens/s" if rate else ""  # noqa: E731
        ratio = self.train_flops / self.forward_flops if self.forward_flops else float("nan")
        rows = [
            (
                "parameters",
                f"{self.params:,} ({self.trainable_params:,} trainable); weights {self.weights_mb:.2f} MB",
            ),
            ("optimizer state", f"{self.optimizer_state_mb:.2f} MB"),
            (
                "FLOPs/example",
                f"forward {si(self.forward_flops)}, training {si(self.train_flops)} "
                f"({ratio:.2f}× forward){at}",
            ),
            (
                "activations",
                f"{_bytes(self.activation_bytes)} per batch of {n}, "
                f"{_bytes(self.activation_bytes_per_example)} per example (saved for backward)",
            ),
            ("loader", f"{self.loader_ms:.1f} ms per batch (host side)"),
            (
                "training",
                f"{self.train_examples_per_s:,.1f} examples/s{tokens(self.train_tokens_per_s)} "
                f"({self.train_step_ms:.1f} ms per step, median of {self.steps})",
            ),
            (
                "inference",
                f"{self.inference_examples_per_s:,.1f} examples/s{tokens(self.inference_tokens_per_s)} "
                f"({self.inference_ms:.1f} ms per batch)",
            ),
            ("achieved", f"{self.achieved_gflops:,.2f} GFLOP/s in training"),
            ("matmul peak", f"{self.peak_gflops:,.1f} GFLOP/s ({self.peak_matmul})"),
            ("MFU", f"{self.mfu:.1%}"),
        ]
        width = max(len(k) for k, _ in rows) + 2
        lines = [
            f"{self.name}: {self.model} on {self.data} ({shape}), {self.device}, {self.precision}, "
            f"{_threads(self.threads)}, batch {n}",
            *(f"  {k:<{width}}{v}" for k, v in rows),
            "",
            "one training step, traced (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in self.phases_ms.items()),
            "",
            f"top operators by self CPU time (ms per step over {TRACE_STEPS} traced steps)",
        ]
        names = [op["name"] if len(op["name"]) <= 60 else op["name"][:57] + "..." for op in self.top_ops]
        name_width = max(len(name) for name in [*names, "operator"]) + 2
        lines.append(f"  {'operator':<{name_width}}{'self ms':>9}{'share':>8}{'calls':>7}")
        for name, op in zip(names, self.top_ops, strict=True):
            lines.append(
                f"  {name:<{name_width}}{op['self_cpu_ms']:>9.2f}{op['share']:>8.1%}{op['calls']:>7g}"
            )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def si(value: float, spec: str = ".3g") -> str:
    """``value`` with an SI prefix (k, M, G, T) and a space before the unit that follows."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:{spec}} {unit}"
    return f"{value:{spec}}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n != 1 else ''}"


def _bytes(value: float) -> str:
    return si(value) + "B" if value >= 1e3 else f"{value:.0f} B"


# ----------------------------------------------------------------------------------------- sources


def profile_source(
    target: str | Path | None, overrides: list[str] | tuple[str, ...] = (), batch_size: int | None = None
) -> tuple[Config, RunDir | None]:
    """The config to profile: the default (``target`` None), a YAML file, or a run directory's own
    (its tokenizer too); ``batch_size`` replaces ``train.batch_size``."""
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    overrides = [*overrides, *([f"train.batch_size={batch_size}"] if batch_size is not None else [])]
    if target is None:
        return load_config(None, overrides), None
    path = Path(target)
    run = RunDir(path)
    if path.is_dir() and run.config_file.is_file():
        cfg = validate_config(apply_overrides(run.raw_config(), overrides))
        cfg.name = cfg.name or path.name
        return cfg, run
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return load_config(path, overrides), None
    what = "a directory without config.yaml" if path.is_dir() else "not a file" if not path.exists() else ""
    raise UserError(
        f"{path} is neither a YAML config nor a run directory{f' ({what})' if what else ''}; "
        "give e.g. configs/fashion-cnn.yaml or runs/<name>"
    )


# --------------------------------------------------------------------------------------- measuring


def profile_model(model: nn.Module, data: DataBundle, cfg: Config, steps: int = 20) -> Profile:
    """Count and time one training batch of ``data`` through ``model`` in the training loop's own
    ``Trainer.train_batch``: the same device, precision, channels-last, compile, loss and optimizer."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    # Enough epochs that the schedule outlasts the profiled steps (OneCycleLR refuses a step too many).
    trainer = Trainer(
        model, data, cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 10**6})})
    )
    tc, device, dtype = cfg.train, trainer.device, trainer.dtype
    channels_last = trainer.channels_last
    model.train()
    batch, loader_ms = _first_batch(trainer.train_loader)
    features = model_inputs(batch)
    n = len(next(iter(features.values())))
    mask = features.get("attention_mask")
    tokens = int(mask.sum()) if mask is not None else None
    length = features["input_ids"].shape[1] if "input_ids" in features else None

    moved = move(batch, device, channels_last)
    forward, train = _training_flops(trainer, moved)
    activations = saved_activation_bytes(trainer, moved)
    train_s = _median_seconds(lambda: trainer.train_batch(batch), steps, WARMUP_STEPS, device)
    phases, top_ops = _trace(lambda: trainer.train_batch(batch), device)
    optimizer_mb = sum(_nbytes(t) for st in trainer.optimizer.state.values() for t in st.values()) / 1e6
    compiled = tc.compile
    model.eval()

    @torch.inference_mode()
    def infer() -> None:
        moved = move(features, device, channels_last)
        with autocast(device, dtype):
            model(**moved)

    infer_s = _median_seconds(infer, steps, 2, device)
    model.train()

    train_flops = train / n
    examples_per_s = n / train_s
    achieved = train_flops * examples_per_s
    peak, how = matmul_peak(device, dtype)
    if achieved > peak:  # the cached peak was measured while something else ran: measure again
        peak, how = matmul_peak(device, dtype, remeasure=True)
    params = list(model.parameters())
    notes = []
    if not trainer.task.variable_length and length is not None:
        notes.append(f"{data.info.kind}: packed blocks of {length} tokens, every one of them real")
    elif length is not None:
        notes.append(
            f"text: FLOPs and speed are at this batch's length, {length} tokens (each batch is trimmed to "
            f"its longest text, up to data.max_length={cfg.data.max_length})"
        )
    if any(isinstance(m, nn.RNNBase) for m in model.modules()) and device.type != "cpu":
        notes.append("recurrent layers' FLOPs are counted on the CPU only (oneDNN kernels): MFU is low here")
    if device.type == "cpu" and dtype == torch.bfloat16 and not cpu_has_native_bf16():
        notes.append("this CPU has no native bf16: bf16 is emulated, slower than fp32 (train.precision=fp32)")
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    if device.type == "cpu" and busy > cores + 0.5:
        notes.append(
            f"this machine is busy (load average {busy:.1f} on {cores} cores): timings are depressed, and "
            "threads that wait for each other slow every operator (train.threads=1 may be faster)"
        )
    if achieved > peak:
        notes.append(
            "MFU above 100 %: the matmul peak measured slower than this model's kernels ran (a busy "
            "machine?); profile again when it is quiet"
        )
    if compiled:
        notes.append("train.compile: training runs the compiled forward (compiled in the warm-up steps)")
    if tc.grad_accum > 1:
        notes.append(f"train.grad_accum={tc.grad_accum}: training steps the optimizer every batch here")
    return Profile(
        name=cfg.name or "config",
        model=cfg.model.name,
        data=cfg.data.name or Path(str(cfg.data.path)).name,
        kind=data.info.kind,
        input_shape=list(data.info.input_shape),
        device=str(device),
        precision=str(dtype).removeprefix("torch."),
        threads=torch.get_num_threads(),
        batch_size=n,
        sequence_length=length,
        tokens_per_batch=tokens,
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        weights_mb=sum(_nbytes(t) for t in [*params, *model.buffers()]) / 1e6,
        optimizer_state_mb=optimizer_mb,
        forward_flops=forward / n,
        train_flops=train_flops,
        activation_bytes=activations,
        activation_bytes_per_example=activations / n,
        loader_ms=loader_ms,
        steps=steps,
        train_step_ms=train_s * 1e3,
        train_examples_per_s=examples_per_s,
        train_tokens_per_s=tokens / train_s if tokens else None,
        inference_ms=infer_s * 1e3,
        inference_examples_per_s=n / infer_s,
        inference_tokens_per_s=tokens / infer_s if tokens else None,
        achieved_gflops=achieved / 1e9,
        peak_gflops=peak / 1e9,
        peak_matmul=how,
        mfu=achieved / peak,
        phases_ms=phases,
        top_ops=top_ops,
        notes=notes,
    )


def _first_batch(loader: BatchLoader) -> tuple[Batch, float]:
    """A batch of the training loader as the Trainer draws it, and the milliseconds a batch takes to
    draw (median of a few)."""
    times, batches = [], iter(loader)
    for _ in range(min(5, len(loader))):
        start = time.perf_counter()
        batch = next(batches)
        times.append(time.perf_counter() - start)
    return batch, statistics.median(times) * 1e3


def _training_flops(trainer: Trainer, batch: Batch) -> tuple[int, int]:
    """FLOPs of the batch's forward pass, and of forward and backward together."""
    counter = flop_counter()
    with counter:
        loss, _, _ = trainer.loss(batch, trainer.model)
        forward = counter.get_total_flops()
        loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def saved_activation_bytes(trainer: Trainer, batch: Batch) -> int:
    """Bytes that one forward pass (and its loss) keeps for backward: each storage once, the model's
    own parameters and buffers excluded (they live anyway)."""
    model = trainer.model
    owned = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    seen: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key not in owned:
            seen[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _, _ = trainer.loss(batch, model)
    del loss  # the graph, and what it saved, goes without a backward pass
    return sum(seen.values())


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    try:
        ptr = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (e.g. subclasses)
        return None
    return (str(tensor.device), ptr) if ptr else None


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _median_seconds(fn: Any, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _trace(step: Any, device: torch.device) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Milliseconds per step in each phase, and the ten operators with the most self CPU time (with
    the time spent outside any operator, in Python, as one more row)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities)
    with _quiet_stderr():  # this build's profiler prints "profiler_start" and "profiler_stop" lines
        prof.start()
    try:
        for _ in range(TRACE_STEPS):
            step()
        _synchronize(device)
    finally:
        with _quiet_stderr():
            prof.stop()
    events = prof.key_averages()
    labels = {LABEL.format(p): p for p in PHASES}
    phases = {labels[e.key]: e for e in events if e.key in labels}
    phases_ms = {p: phases[p].cpu_time_total / TRACE_STEPS / 1e3 for p in PHASES if p in phases}
    total = sum(e.cpu_time_total for e in phases.values()) or 1.0
    ops = [e for e in events if e.key not in labels and e.self_cpu_time_total > 0]
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [
        {
            "name": e.key,
            "self_cpu_ms": e.self_cpu_time_total / TRACE_STEPS / 1e3,
            "share": e.self_cpu_time_total / total,
            "calls": e.count / TRACE_STEPS,
        }
        for e in ops[:10]
    ]
    outside = sum(e.self_cpu_time_total for e in phases.values())  # Python between the operators
    rows.append(
        {
            "name": "(outside operators: Python)",
            "self_cpu_ms": outside / TRACE_STEPS / 1e3,
            "share": outside / total,
            "calls": 0,
        }
    )
    return phases_ms, rows


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the C++ side's stderr (file descriptor 2) for a moment."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# -------------------------------------------------------------------------------------------- peak


def matmul_peak(
    device: torch.device, dtype: torch.dtype, cache: Path | None = None, remeasure: bool = False
) -> tuple[float, str]:
    """FLOP/s of a large square matmul in ``dtype`` (best of a few), with this process's thread count;
    measured once per (processor, threads, dtype, torch version) and cached in ``cache`` (default
    ``~/.cache/bigmodel/matmul_peak.json``), or again when ``remeasure``. Other work on the machine can
    only make a measurement low, so the cache keeps the best one. Returns the FLOP/s and how they were
    measured."""
    cache = cache or PEAK_CACHE
    threads = torch.get_num_threads()
    dtype_name = str(dtype).removeprefix("torch.")
    key = peak_key(device, dtype)
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key) if isinstance(known.get(key), dict) else None
    best_known = float(entry.get("flops", 0)) if entry else 0.0
    if best_known > 0 and not remeasure:
        return best_known, f"{entry['size']}² {dtype_name} matmul, {_threads(threads)}, cached"
    size = 4096 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best, spent = math.inf, 0.0
    for i in range(6):  # one warm-up, then up to five, within about three seconds
        _synchronize(device)
        start = time.perf_counter()
        a @ b
        _synchronize(device)
        seconds = time.perf_counter() - start
        if i:
            best = min(best, seconds)
            spent += seconds
            if i >= 2 and spent > 3.0:
                break
    flops = 2 * size**3 / best
    if flops <= best_known:
        how = f"{size}² {dtype_name} matmul, {_threads(threads)}, the best of now and cached"
        return best_known, how
    known[key] = {"flops": flops, "size": size}
    with contextlib.suppress(OSError):  # a read-only home only costs a re-measurement next time
        write_json(cache, known)
    return flops, f"{size}² {dtype_name} matmul, {_threads(threads)}, measured now"


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a cached peak holds for: processor, this process's threads, dtype and torch version."""
    dtype_name = str(dtype).removeprefix("torch.")
    return (
        f"{_processor(device)} | {torch.get_num_threads()} threads | {dtype_name} | torch {torch.__version__}"
    )


def _processor(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

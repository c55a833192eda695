"""``bigmodel export``: a run's best model as ONNX, for onnxruntime alone (no PyTorch, no bigmodel).

The export directory holds everything an application needs: ``model.onnx`` (and ``model.int8.onnx``
with ``--quantize int8``), the tokenizer (``tokenizer.json``, with the run's text cleaning, truncation
and padding built in) or the image preprocessing, the class names, and ``export.json``, which says what
was exported, how, and how closely it agrees with PyTorch.

Two exporters, as torch offers them: the dynamo-based one first, then the TorchScript-based one where
that fails to export or to agree (recurrent models, whose packed sequences torch.export cannot trace).
Either way the graph is kept only if it passes the parity gate: onnxruntime against PyTorch on real
validation inputs, at batch sizes (and, for text, lengths) other than the example's, every argmax the
same and every logit within ``TOLERANCE`` of PyTorch's. A model that fails is an error, and nothing
is written: the directory appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bigmodel.data import DataBundle
from bigmodel.errors import UserError, one_line
from bigmodel.evaluation.scoring import run_data
from bigmodel.files import write_json
from bigmodel.run import RunDir
from bigmodel.tasks import Task, task_for

FORMATS = ("onnx",)
QUANTIZATIONS = ("int8",)
TOLERANCE = 1e-3  # largest |ONNX logit - PyTorch logit|, relative to the largest |logit| (at least 1)
PARITY_BATCHES = (3, 7)  # the example has 2: a graph that froze the batch size fails here
TORCHSCRIPT_OPSET = 17
ACCURACY_BATCH = 64
# Dynamic quantization makes int8 matrix products (MatMulInteger); convolutions stay float32: ONNX
# Runtime's dynamic ConvInteger is slower than its float Conv on CPUs.
QUANTIZED_OPS = ["MatMul", "Gemm"]
# onnxruntime's CPU SkipLayerNormalization (the fusion of a residual Add into the LayerNorm after it) is
# 8x slower than the two operators it replaces in 1.32: 267 µs against 34 + 12 on BERT's 256 x 256
# activations, a quarter of the whole int8 forward. Sessions are opened without that fusion, by bigmodel
# and by the README's lines, which read these keyword arguments from export.json.
SESSION_OPTIONS: dict[str, Any] = {"disabled_optimizers": ["SkipLayerNormFusion"]}


@dataclass
class Parity:
    max_abs_diff: float
    max_abs_logit: float
    argmax_agreement: float
    shapes: list[list[int]]

    @property
    def passed(self) -> bool:
        return self.argmax_agreement == 1.0 and self.max_abs_diff <= TOLERANCE * max(1.0, self.max_abs_logit)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.shapes,
            "max_abs_logit_diff": self.max_abs_diff,
            "max_abs_logit": self.max_abs_logit,
            "argmax_agreement": self.argmax_agreement,
            "tolerance": TOLERANCE,
        }


class LogitsOnly(nn.Module):
    """The model as an exporter traces it: positional tensors in, the logits tensor out."""

    def __init__(self, model: nn.Module, task: Task, names: list[str]):
        super().__init__()
        self.model, self.task, self.names = model, task, names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.task.output(self.model, dict(zip(self.names, inputs, strict=True))).logits


def export_run(
    run: RunDir, out: str | Path | None = None, fmt: str = "onnx", quantize: str | None = None
) -> tuple[Path, dict[str, Any]]:
    """Export the run's best model to ``out`` (default ``RUN/export``); returns it and export.json."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt} is not supported; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserError(f"--quantize {quantize} is not supported; choose {', '.join(QUANTIZATIONS)}")
    task = task_for(run.info)
    task.require_classifier(run.root, "export")
    target = Path(out) if out is not None else run.root / "export"
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not _is_export(target))):
        raise UserError(f"-o {target} exists and is not an earlier export; give a new directory")
    _require_onnxruntime()

    data = run_data(run.config, run)
    model = run.model.cpu().float().eval()
    names = list(data.val.features)
    wrapper = LogitsOnly(model, task, names).eval()
    example = _batch(data, "val", slice(0, 2))
    checks = list(_parity_inputs(data, example))

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        record = _export(run, data, wrapper, example, checks, work, quantize)
        _publish(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target, record


def _export(
    run: RunDir,
    data: DataBundle,
    wrapper: LogitsOnly,
    example: tuple[torch.Tensor, ...],
    checks: list[tuple[torch.Tensor, ...]],
    work: Path,
    quantize: str | None,
) -> dict[str, Any]:
    path = work / "model.onnx"
    failures = []
    for exporter in ("dynamo", "torchscript"):
        try:
            with wrapper.model.exporting():
                _to_onnx(wrapper, example, path, exporter, data.info.input_shape[0])
        except Exception as exc:  # any exporter failure: try the other, and say why if both fail
            failures.append(f"{exporter}: {one_line(exc, 200)}")
            continue
        parity = _parity(wrapper, path, checks)
        if parity.passed:
            break
        failures.append(
            f"{exporter}: disagrees with PyTorch (max |Δlogit| {parity.max_abs_diff:.2g}, "
            f"argmax agreement {parity.argmax_agreement:.2%})"
        )
    else:
        raise UserError(f"{run.root} could not be exported to ONNX: {'; '.join(failures)}")

    import onnx
    import onnxruntime

    imports = onnx.load(str(path), load_external_data=False).opset_import
    opset = next(o.version for o in imports if not o.domain)
    record: dict[str, Any] = {
        "format": "onnx",
        "files": {"model": "model.onnx"},
        "exporter": exporter,
        "exporter_fallback_reason": "; ".join(failures) or None,
        "opset": opset,
        "inputs": {name: _input_spec(name) for name in wrapper.names},
        "outputs": {"logits": "float32 (batch, classes); softmax gives the probabilities"},
        "session": SESSION_OPTIONS,
        "classes": data.info.classes,
        "kind": data.info.kind,
        "parity": parity.to_dict(),
        "run": str(run.root.resolve()),
        "model": run.config.model.name,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "size_bytes": {"model.onnx": path.stat().st_size},
    }
    if data.info.kind == "text":
        record["files"]["tokenizer"] = "tokenizer.json"
        record["preprocessing"] = _write_tokenizer(run, work / "tokenizer.json", data.info.input_shape[0])
    else:
        record["preprocessing"] = _image_preprocessing(data)
    if wrapper.model.hf_classifier_family:
        record["hf"] = _hf_classifier(run, wrapper, checks, work)
    if quantize == "int8":
        record["quantization"] = _quantize(data, path, work / "model.int8.onnx", wrapper, checks)
        record["files"]["model_int8"] = "model.int8.onnx"
        record["size_bytes"]["model.int8.onnx"] = (work / "model.int8.onnx").stat().st_size
    write_json(work / "export.json", record)
    return record


# --- exporting ------------------------------------------------------------------------------------


def _to_onnx(
    wrapper: LogitsOnly, example: tuple[torch.Tensor, ...], path: Path, exporter: str, max_length: int
) -> None:
    path.unlink(missing_ok=True)
    names = wrapper.names
    text = names != ["pixels"]
    common = {"input_names": names, "output_names": ["logits"], "dynamo": exporter == "dynamo"}
    if exporter == "dynamo":
        from torch.export import Dim

        batch = Dim("batch", min=1)
        axes = {0: batch, 1: Dim("length", min=2, max=max_length)} if text else {0: batch}
        shapes = tuple(axes for _ in names)
        options = {"dynamic_shapes": {"inputs": shapes}, "external_data": False, "verbose": False}
    else:
        axes = {name: ({0: "batch", 1: "length"} if text else {0: "batch"}) for name in names}
        options = {"dynamic_axes": {**axes, "logits": {0: "batch"}}, "opset_version": TORCHSCRIPT_OPSET}
    with _quiet():
        torch.onnx.export(wrapper, example, str(path), **common, **options)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters print their progress and warn about optional operators (torchvision's): noise
    here, since the parity gate decides whether the graph is right."""
    names = ("torch.onnx", "torch.export", "torch._dynamo", "")  # "": the root, where quantization warns
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (``threads``: intra-op threads, default onnxruntime's), errors-only
    logging, and threads that do not spin after each call: spinning, they take the cores from whatever
    runs next beside them (the server's encoding threads, PyTorch in a side-by-side benchmark)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], **SESSION_OPTIONS
    )


def _parity(wrapper: LogitsOnly, path: Path, checks: list[tuple[torch.Tensor, ...]]) -> Parity:
    session = onnx_session(path)
    worst, largest, agree, total = 0.0, 0.0, 0, 0
    for inputs in checks:
        with torch.inference_mode():
            expected = wrapper(*inputs).float().numpy()
        got = session.run(["logits"], {n: x.numpy() for n, x in zip(wrapper.names, inputs, strict=True)})[0]
        if got.shape != expected.shape:
            return Parity(float("inf"), float(np.abs(expected).max()), 0.0, _shapes(checks))
        worst = max(worst, float(np.abs(got - expected).max()))
        largest = max(largest, float(np.abs(expected).max()))
        agree += int((got.argmax(1) == expected.argmax(1)).sum())
        total += len(expected)
    return Parity(worst, largest, agree / total, _shapes(checks))


def _shapes(checks: list[tuple[torch.Tensor, ...]]) -> list[list[int]]:
    return [list(inputs[0].shape) for inputs in checks]


# --- inputs ---------------------------------------------------------------------------------------


def _batch(data: DataBundle, split: str, index: slice) -> tuple[torch.Tensor, ...]:
    part = data.split(split).take(index)
    return tuple(data.eval_transform(part.features, None).values())


def _parity_inputs(data: DataBundle, example: tuple[torch.Tensor, ...]) -> Iterator[tuple[torch.Tensor, ...]]:
    """Validation examples after the export ``example`` (the first two), at batch sizes, and for text at
    lengths, that it did not have."""
    if len(data.val) < 2 + sum(PARITY_BATCHES):
        raise UserError(
            f"export checks the model on {2 + sum(PARITY_BATCHES)} validation examples; the run has "
            f"{len(data.val)}: raise data.val_fraction"
        )
    start = 2
    example_length = example[0].shape[-1]
    max_length = data.info.input_shape[0]
    lengths = [n for n in (max(3, example_length // 2), max_length, max_length - 1) if n != example_length]
    for batch, length in zip(PARITY_BATCHES, lengths, strict=False):
        inputs = _batch(data, "val", slice(start, start + batch))
        start += batch
        if data.info.kind == "text":  # cut or pad (with the pad id, masked) to exactly `length`
            ids, mask = inputs
            inputs = (_fit(ids, length, data.info.pad_token_id), _fit(mask, length, 0))
        yield inputs


def _fit(x: torch.Tensor, length: int, fill: int) -> torch.Tensor:
    if x.shape[1] >= length:
        return x[:, :length].contiguous()
    pad = torch.full((x.shape[0], length - x.shape[1]), fill, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


def _input_spec(name: str) -> str:
    if name == "pixels":
        return "float32 (batch, channels, height, width), preprocessed as 'preprocessing' says"
    if name == "attention_mask":
        return "int64 (batch, length): 1 for a token, 0 for padding (the tokenizer's attention_mask)"
    return "int64 (batch, length): the tokenizer's ids"


# --- what the application needs besides the graph -----------------------------------------------


def _write_tokenizer(run: RunDir, path: Path, max_length: int) -> dict[str, Any]:
    """The run's tokenizer with bigmodel's text cleaning (IMDB's ``<br />`` → space) in its normalizer
    and its truncation and padding switched on, so ``Tokenizer.from_file(...).encode_batch(texts)``
    gives exactly the ids bigmodel feeds its model."""
    from tokenizers import Tokenizer

    source = run.tokenizer_dir / "tokenizer.json"
    if not source.is_file():
        raise UserError(
            f"{run.tokenizer_dir} has no tokenizer.json (a slow, Python-only tokenizer); export needs a "
            "fast one"
        )
    tokenizer = Tokenizer.from_file(str(source))
    tokenizer.normalizer = _cleaning(tokenizer.normalizer)
    config = json.loads((run.tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    pad_token = config.get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token, direction="right")
    tokenizer.save(str(path))
    return {"tokenizer": "tokenizer.json", "max_length": max_length, "pad_token_id": pad_id}


def _cleaning(normalizer: Any) -> Any:
    """``normalizer`` preceded by bigmodel's text cleaning: HTML line breaks (IMDB's ``<br />``) become
    spaces, runs of whitespace one space, and the ends are stripped."""
    from tokenizers import Regex, normalizers

    cleaning = [
        normalizers.Replace(Regex(r"(?i)<br\s*/?\s*>"), " "),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ]
    return normalizers.Sequence(cleaning + ([normalizer] if normalizer is not None else []))


def _image_preprocessing(data: DataBundle) -> dict[str, Any]:
    channels, height, width = data.info.input_shape
    return {
        "mode": "L" if channels == 1 else "RGB",
        "size": [width, height],
        "resize": "bilinear (Pillow's Image.Resampling.BILINEAR)",
        "scale": 1 / 255,
        "mean": data.info.mean,
        "std": data.info.std,
        "layout": "NCHW",
        "formula": "pixels = (array / 255 - mean) / std, per channel",
    }


def _hf_classifier(
    run: RunDir, wrapper: LogitsOnly, checks: list[tuple[torch.Tensor, ...]], work: Path
) -> dict[str, Any]:
    """``hf/``: the model as a transformers sequence classifier with its tokenizer (bigmodel's text
    cleaning and ``max_length`` included), which ``pipeline("text-classification")`` reads; or why
    there is none."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for writing one file is noise
    try:
        hf = wrapper.model.hf_classifier(run.info.classes)
    except UserError as exc:
        return {"unsupported": str(exc)}
    worst = 0.0
    for ids, mask in checks:
        with torch.inference_mode():
            ours = wrapper(ids, mask)
            theirs = hf(input_ids=ids, attention_mask=mask).logits
        worst = max(worst, float((ours - theirs).abs().max()))
    tokenizer = AutoTokenizer.from_pretrained(str(run.tokenizer_dir))
    tokenizer.backend_tokenizer.normalizer = _cleaning(tokenizer.backend_tokenizer.normalizer)
    tokenizer.model_max_length = run.info.input_shape[0]
    with _quiet():
        hf.save_pretrained(work / "hf")
        tokenizer.save_pretrained(work / "hf")
    return {"directory": "hf", "class": type(hf).__name__, "max_abs_logit_diff": worst}


# --- int8 -----------------------------------------------------------------------------------------


def _quantize(
    data: DataBundle, fp32: Path, int8: Path, wrapper: LogitsOnly, checks: list[tuple[torch.Tensor, ...]]
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(fp32), str(int8), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS
        )
    graph = onnx.load(str(int8)).graph
    integer_ops = sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in graph.node)
    float_convs = sum(node.op_type == "Conv" for node in graph.node)
    before = _accuracy(onnx_session(fp32), data, wrapper.names)
    after = _accuracy(onnx_session(int8), data, wrapper.names)
    parity = _parity(wrapper, int8, checks)
    record = {
        "method": "onnxruntime dynamic quantization, int8 weights, activations quantized per batch",
        "quantized_ops": QUANTIZED_OPS,
        "integer_matmuls": integer_ops,
        "test_accuracy_fp32": before,
        "test_accuracy_int8": after,
        "test_accuracy_change_points": 100 * (after - before),
        "parity_int8": parity.to_dict(),
    }
    if float_convs:
        record["note"] = (
            f"{float_convs} convolutions stay float32 (dynamic int8 convolutions are slower on CPUs): only "
            "the fully connected layers are int8"
        )
    elif not integer_ops:
        record["note"] = "no matrix product was quantized: the file is the float32 one"
    return record


def _accuracy(session: Any, data: DataBundle, names: list[str]) -> float:
    test = data.split("test")
    correct = 0
    for start in range(0, len(test), ACCURACY_BATCH):
        part = test.take(slice(start, start + ACCURACY_BATCH))
        inputs = data.eval_transform(part.features, None)
        logits = session.run(["logits"], {n: inputs[n].numpy() for n in names})[0]
        correct += int((logits.argmax(1) == part.labels.numpy()).sum())
    return correct / len(test)


# --- files ----------------------------------------------------------------------------------------


def _is_export(directory: Path) -> bool:
    return (directory / "export.json").is_file()


def _publish(work: Path, target: Path) -> None:
    """Move the finished export into place, replacing an earlier export only once this one is whole."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    work.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _require_onnxruntime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"export needs {exc.name}: pip install onnx onnxruntime onnxscript") from None

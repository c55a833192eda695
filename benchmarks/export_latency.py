"""Inference latency of a run's classifier four ways, measured side by side: PyTorch eager in fp32 and in
bf16 (autocast), ONNX Runtime fp32 and ONNX Runtime int8 (``bigmodel export --quantize int8``), at batch
1 and batch 32, with the test accuracy of each.

    python -m benchmarks.export_latency RUN [RUN ...] [--repeats 200] [--threads 2] [--out FILE.json]

Inputs are real test examples, texts at the run's full ``data.max_length`` (the padded length a server
sees for long reviews). The four ways take turns within each repeat, so a burst of load on these shared
cores slows all of them alike; p50 and p99 are over the repeats, after warm-up. Accuracy: PyTorch's
from scoring the test split in that precision, ONNX Runtime's from export.json (the export scores it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bigmodel.api import export
from bigmodel.deploy.export import onnx_session
from bigmodel.device import autocast
from bigmodel.evaluation.scoring import load_with_data, split_metrics

BATCHES = (1, 32)
WARMUP = 10


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_latency", description=about)
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    p.add_argument("--out", help="also write the results here as JSON")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(Path(run), args.repeats, args.threads) for run in args.runs]
    for result in results:
        print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def measure(run: Path, repeats: int, threads: int) -> dict[str, Any]:
    folder, record = export(run, run / "export", quantize="int8")
    loaded, data, _, _ = load_with_data(run)
    model = loaded.model.cpu().float().eval()
    cpu = torch.device("cpu")
    accuracy = {
        "pytorch fp32": split_metrics(model, data, "test", loaded.config, cpu, torch.float32)["accuracy"],
        "pytorch bf16": split_metrics(model, data, "test", loaded.config, cpu, torch.bfloat16)["accuracy"],
        "onnxruntime fp32": record["quantization"]["test_accuracy_fp32"],
        "onnxruntime int8": record["quantization"]["test_accuracy_int8"],
    }
    sessions = {
        # Not spinning (onnx_session): spinning, onnxruntime's threads took the cores from PyTorch's turn
        # and made eager fp32 BERT look 2.7x slower at batch 1 (39 ms against 14).
        "onnxruntime fp32": onnx_session(folder / "model.onnx", threads),
        "onnxruntime int8": onnx_session(folder / "model.int8.onnx", threads),
    }
    names = list(data.test.features)
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for batch in BATCHES:
        part = data.test.take(slice(0, batch))
        features = part.features if data.info.kind == "text" else data.eval_transform(part.features, None)
        tensors = {n: features[n].long() if data.info.kind == "text" else features[n] for n in names}
        arrays = {n: t.numpy() for n, t in tensors.items()}
        ways = {
            "pytorch fp32": lambda t=tensors: eager(model, t, torch.float32),
            "pytorch bf16": lambda t=tensors: eager(model, t, torch.bfloat16),
            **{name: (lambda s=s, a=arrays: s.run(["logits"], a)) for name, s in sessions.items()},
        }
        times: dict[str, list[float]] = {way: [] for way in ways}
        for i in range(WARMUP + repeats):
            for way, call in ways.items():
                start = time.perf_counter()
                call()
                if i >= WARMUP:
                    times[way].append(1000 * (time.perf_counter() - start))
        latency[f"batch {batch}"] = {
            way: {"p50_ms": statistics.median(t), "p99_ms": float(np.percentile(t, 99))}
            for way, t in times.items()
        }
    return {
        "run": str(run),
        "model": loaded.config.model.name,
        "input": list(data.info.input_shape),
        "exporter": record["exporter"],
        "int8": {k: record["quantization"].get(k) for k in ("integer_matmuls", "note")},
        "size_bytes": record["size_bytes"],
        "threads": threads,
        "repeats": repeats,
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d"),
        "test_accuracy": accuracy,
        "latency": latency,
    }


@torch.inference_mode()
def eager(model: torch.nn.Module, features: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    with autocast(torch.device("cpu"), dtype):
        return model(**features).logits


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{result['model']} ({result['run']}), input {result['input']}, {result['threads']} threads")
    ways = list(result["test_accuracy"])
    print(f"{'':18}" + "".join(f"{w:>18}" for w in ways))
    for batch, row in result["latency"].items():
        fp32 = row["pytorch fp32"]["p50_ms"]
        cells = "".join(f"{row[w]['p50_ms']:>9.2f} ({row[w]['p99_ms']:.1f})" for w in ways)
        print(f"{batch + ' p50 (p99) ms':18}{cells}")
        print(f"{'  vs eager fp32':18}" + "".join(f"{fp32 / row[w]['p50_ms']:>17.2f}x" for w in ways))
    print(f"{'test accuracy':18}" + "".join(f"{result['test_accuracy'][w]:>18.4f}" for w in ways))


if __name__ == "__main__":
    raise SystemExit(main())

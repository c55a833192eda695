"""bigmodel with its defaults against the seed's plain fp32 loop, whole epochs, scored on the test set.

    python -m benchmarks.defaults --epochs 3 --repeats 2 [--threads N] [--out FILE]

(a) the seed's section 4.1 loop, fixed (plain.py's loop: bigmodel's ``seed-cnn``, float32, no
augmentation, AdamW at 1e-3 with a cosine decay over the run, batch 128, a torch DataLoader), trained on
the same 54,000 Fashion-MNIST training images that bigmodel trains on; (b) ``bigmodel train
model.name=seed-cnn train.epochs=E`` with every other setting at its default (bf16 where the CPU has it,
channels-last, augmentation, the same optimizer and schedule). Each run is a fresh process, the two
interleaved. Throughput is training examples/s over the epochs, without validation or testing; accuracy
is on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.cases import Collate, EpochOrder
from benchmarks.harness import machine
from bigmodel.config import load_config
from bigmodel.data import build_data
from bigmodel.device import seed_everything
from bigmodel.models import build_model

BATCH, LR = 128, 1e-3


def plain(epochs: int, seed: int) -> dict[str, float]:
    cfg = load_config(None, ["model.name=seed-cnn"])
    data = build_data(cfg.data)
    seed_everything(seed, deterministic=False)
    model = build_model(cfg.model, data.info)
    names = list(data.train.features)
    loader = DataLoader(
        TensorDataset(*data.train.features.values(), data.train.labels),
        batch_size=BATCH,
        sampler=EpochOrder(len(data.train), seed),
        drop_last=True,
        collate_fn=Collate(names, data.eval_transform),  # normalise only: the seed does not augment
    )
    total = epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )
    seconds = examples = 0.0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for batch in loader:
            labels = batch.pop("labels")
            loss = F.cross_entropy(model(**batch).logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            examples += len(labels)
        seconds += time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        test = data.eval_transform(data.test.features, None)
        correct = sum(
            int(
                (
                    model(**{k: v[i : i + 1024] for k, v in test.items()}).logits.argmax(1)
                    == data.test.labels[i : i + 1024]
                ).sum()
            )
            for i in range(0, len(data.test), 1024)
        )
    return {"samples_per_s": examples / seconds, "test_accuracy": correct / len(data.test)}


def bigmodel(epochs: int, seed: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = ["model.name=seed-cnn", f"train.epochs={epochs}", f"train.seed={seed}", "train.progress=false"]
        args.append(f"train.threads={torch.get_num_threads()}")  # the default where --threads is all cores
        subprocess.run([sys.executable, "-m", "bigmodel", "train", *args, f"--out={run}"], check=True)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        report = json.loads((run / "report.json").read_text())
    examples = sum(m["train/samples_per_s"] * m["train/epoch_seconds"] for m in lines)
    seconds = sum(m["train/epoch_seconds"] for m in lines)
    return {"samples_per_s": examples / seconds, "test_accuracy": report["test"]["accuracy"]}


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="benchmarks/results/extra/defaults.json")
    p.add_argument("--worker", choices=("plain", "bigmodel"), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        torch.set_num_threads(args.threads)
        result = (plain if args.worker == "plain" else bigmodel)(args.epochs, args.seed)
        print(json.dumps(result))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "bigmodel": []}
    for repeat in range(args.repeats):
        for worker in runs:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.defaults",
                f"--worker={worker}",
                f"--epochs={args.epochs}",
            ]
            cmd += [f"--threads={args.threads}", f"--seed={repeat}"]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            runs[worker].append(json.loads(out.strip().splitlines()[-1]))
            print(f"{worker} seed {repeat}: {runs[worker][-1]}", file=sys.stderr)
    summary = {
        worker: {k: statistics.median(r[k] for r in results) for k in ("samples_per_s", "test_accuracy")}
        for worker, results in runs.items()
    }
    speedup = summary["bigmodel"]["samples_per_s"] / summary["plain"]["samples_per_s"]
    gap = summary["bigmodel"]["test_accuracy"] - summary["plain"]["test_accuracy"]
    doc = {
        "epochs": args.epochs,
        "threads": args.threads,
        "machine": machine(),
        "runs": runs,
        "summary": summary,
    }
    doc.update(speedup=speedup, accuracy_gap_points=100 * gap)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(
        f"bigmodel defaults: {speedup:.2f}× the plain fp32 loop's examples/s, "
        f"test accuracy {100 * gap:+.2f} points"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

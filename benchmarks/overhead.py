"""The loop's own cost: bigmodel's ``Trainer.train_batch`` against the plain loop's step, in one process.

    python -m benchmarks.overhead --case seed-cnn --precision fp32 [--batches 20] [--rounds 8] [--threads 1]

Between processes these shared cores drift by about ±10 % (the ranges in RESULTS.md), more than the
3 % that would separate a good loop from a plain one. Here both run in one process on the same batches,
in alternating rounds (plain first in even rounds, bigmodel first in odd ones), each with its own copy
of the same initial model and its own fused AdamW. The plain step is the seed's, fixed: forward under
autocast, float32 cross-entropy, zero_grad, backward, step, the schedule's step, on the model as
built (no channels-last). bigmodel's is ``Trainer.train_batch``, the loop's own code: the move to the
device (and to channels-last for images, as by default), its bookkeeping, profiler labels, optimizer
and schedule steps. Callbacks are not in it; the end-to-end harness (``benchmarks.harness``) counts
them. Reported: examples/s per round, their medians, and the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.cases import CASES, Settings, bigmodel_config, loss
from benchmarks.harness import machine
from bigmodel.data import build_data
from bigmodel.device import autocast, seed_everything
from bigmodel.engine.optim import build_scheduler
from bigmodel.engine.trainer import Trainer
from bigmodel.models import build_model


def measure(case: str, precision: str, batches: int, rounds: int, threads: int, extra: list[str]) -> dict:
    c = CASES[case]
    settings = Settings(
        case, precision, batches, 0, c.batch_size, c.lr, c.check_every, c.val_examples, c.target, threads
    )
    settings.bigmodel_extra = extra
    cfg = bigmodel_config(settings)
    data = build_data(cfg.data)
    seed_everything(0, deterministic=False)
    model = build_model(cfg.model, data.info)
    plain_model = copy.deepcopy(model)  # before the Trainer makes its copy channels-last
    trainer = Trainer(model, data, cfg)
    torch.set_num_threads(threads)  # after the Trainer, which sets train.threads itself
    loader = iter(trainer.train_loader)
    work = [next(loader) for _ in range(batches)]
    optimizer = torch.optim.AdamW(plain_model.parameters(), lr=c.lr, weight_decay=0.0, fused=True)
    schedule = build_scheduler(optimizer, cfg.optim, trainer.steps_per_epoch, cfg.train.epochs)  # the same

    def plain_step(batch: dict[str, torch.Tensor]) -> None:
        features = {k: v for k, v in batch.items() if k != "labels"}
        with autocast(trainer.device, trainer.dtype):
            logits = plain_model(**features)
        optimizer.zero_grad()
        loss(logits, batch["labels"]).backward()
        optimizer.step()
        schedule.step()

    steps = {"plain": plain_step, "bigmodel": trainer.train_batch}
    plain_model.train()
    trainer.forward_model.train()
    speed: dict[str, list[float]] = {"plain": [], "bigmodel": []}
    for round_ in range(rounds + 1):  # round 0 warms both up and is not kept
        order = ["plain", "bigmodel"] if round_ % 2 == 0 else ["bigmodel", "plain"]
        for name in order:
            start = time.perf_counter()
            for batch in work:
                steps[name](batch)
            if round_:
                speed[name].append(batches * c.batch_size / (time.perf_counter() - start))
    ratios = [b / p for b, p in zip(speed["bigmodel"], speed["plain"], strict=True)]
    return {
        "case": case,
        "precision": precision,
        "batches": batches,
        "rounds": rounds,
        "threads": threads,
        "overrides": extra,
        "samples_per_s": speed,
        "median": {name: statistics.median(v) for name, v in speed.items()},
        "ratio_median": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES), required=True)
    p.add_argument("--precision", choices=("fp32", "bf16"), required=True)
    p.add_argument("--batches", type=int, default=20, help="batches per round")
    p.add_argument("--rounds", type=int, default=8, help="timed rounds per loop, alternating")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bigmodel-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="benchmarks/results/extra/overhead.json")
    args = p.parse_args()
    result = measure(args.case, args.precision, args.batches, args.rounds, args.threads, args.bigmodel_set)
    result["machine"] = machine()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    results[f"{args.case}-{args.precision}" + "".join(f" {o}" for o in args.bigmodel_set)] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    m = result["median"]
    low, high = result["ratio_range"]
    print(
        f"{args.case} {args.precision}: plain {m['plain']:.1f}, bigmodel {m['bigmodel']:.1f} samples/s "
        f"(medians of {args.rounds} rounds); bigmodel/plain {result['ratio_median']:.3f} "
        f"(rounds {low:.3f}–{high:.3f})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

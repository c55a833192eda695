"""Does pruning pay? The same ``bigmodel tune`` study with Hyperband and with no pruning, side by side.

    python -m benchmarks.tune_pruning [CONFIG] [--repeats 3] [--work DIR]

Each repeat runs the config's study twice in fresh processes, one after the other (Hyperband first in
odd repeats, last in even ones, so a drift in the machine's load falls on both alike): the wall time of
each and the best validation metric each found. Reported: the per-repeat ratio of wall times and gap in
best value, and their medians. The sampler's seed differs between repeats (``tune.seed``), not between
the two studies of one repeat. Results in ``benchmarks/results/tune_pruning.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "tune_pruning.json"


def study(config: str, pruner: str, seed: int, out: Path) -> dict[str, float]:
    """One study in a fresh process: its wall time, best value and trial counts."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bigmodel", "tune", config, f"tune.pruner={pruner}", f"tune.seed={seed}",
         "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    summary = json.loads((out / "study.json").read_text())
    return {"seconds": seconds, "best": summary["best"]["value"], **summary["trials"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.tune_pruning", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("config", nargs="?", default="configs/rt-tune.yaml")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work", help="where the studies go (default: a temporary folder)")
    p.add_argument("--results", default=str(RESULTS), help="the JSON file to write")
    args = p.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="tune-pruning-"))
    repeats = []
    for seed in range(args.repeats):
        order = ("hyperband", "none") if seed % 2 == 0 else ("none", "hyperband")
        found = {pruner: study(args.config, pruner, seed, work / f"{pruner}-{seed}") for pruner in order}
        hyperband, none = found["hyperband"], found["none"]
        row = {
            "seed": seed,
            "hyperband": hyperband,
            "none": none,
            "time_ratio": hyperband["seconds"] / none["seconds"],
            "best_gap_points": 100 * (none["best"] - hyperband["best"]),
        }
        repeats.append(row)
        print(
            f"seed {seed}: hyperband {hyperband['seconds']:.0f} s (best {hyperband['best']:.4f}, "
            f"{hyperband['pruned']} pruned), none {none['seconds']:.0f} s (best {none['best']:.4f}): "
            f"time {row['time_ratio']:.2f}x, gap {row['best_gap_points']:+.2f} points",
            flush=True,
        )
    summary = {
        "config": args.config,
        "repeats": repeats,
        "time_ratio_median": statistics.median(r["time_ratio"] for r in repeats),
        "best_gap_points_median": statistics.median(r["best_gap_points"] for r in repeats),
    }
    print(
        f"median: Hyperband takes {summary['time_ratio_median']:.2f}x the wall time of no pruning; best "
        f"validation {summary['best_gap_points_median']:+.2f} points behind"
    )
    Path(args.results).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

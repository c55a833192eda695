"""Train one case in every framework, interleaved (A B C D A B C D ...), each run in a fresh process, and
write the measurements to JSON (benchmarks/README.md says what is measured and how).

    python -m benchmarks.harness --case seed-cnn --precision bf16 --steps 400 --repeats 3 \\
        --out benchmarks/results/seed-cnn.json

The data are built once per invocation (bigmodel's data code, in a process of their own) and saved; every
run loads the same tensors. A results file holds one entry per precision: running the other precision
into the same file adds to it, running the same one again replaces it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.cases import CASES, Settings
from benchmarks.frameworks import FRAMEWORKS
from benchmarks.report import summarize

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args.worker, Path(args.settings), Path(args.result))
    if not args.case or not args.precision:
        raise SystemExit("give --case and --precision (see --help)")
    case = CASES[args.case]
    frameworks = args.frameworks.split(",") if args.frameworks else list(case.frameworks)
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise SystemExit(f"unknown framework {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    base = Settings(
        case=case.name,
        precision=args.precision,
        steps=args.steps or case.steps,
        warmup=args.warmup,
        batch_size=case.batch_size,
        lr=case.lr,
        check_every=args.check_every or case.check_every,
        val_examples=args.val_examples or case.val_examples,
        target=case.target if args.target is None else args.target,
        threads=args.threads,
        seed=args.seed,
        bigmodel_extra=args.bigmodel_set,
    )
    if not 0 <= base.warmup < base.steps:
        raise SystemExit(f"--warmup {base.warmup} must be at least 0 and below --steps {base.steps}")
    if min(args.repeats, base.check_every, base.val_examples, base.threads) < 1:
        raise SystemExit("--repeats, --check-every, --val-examples and --threads must be at least 1")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{case.name}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"case": case.name, "measurements": {}}
    if doc.get("case") != case.name:
        raise SystemExit(f"{out} holds results of case {doc.get('case')!r}, not {case.name!r}")

    before = machine()
    if (load := before["load_average"][0]) > 0.5:
        print(f"warning: load average {load:.2f}: the machine is not quiet", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bigmodel-bench-") as tmp:
        base.data = str(Path(tmp) / "data.pt")
        print(f"{case.name}: building the data ...", file=sys.stderr)
        data = _child("prepare", base, Path(tmp))
        for repeat in range(args.repeats):
            for framework in frameworks:
                workdir = Path(tmp) / f"{framework}-{repeat}"
                settings = replace(base, framework=framework, workdir=str(workdir))
                result = _child(framework, settings, Path(tmp))
                if args.logs:  # the run's output (progress bars, warnings), to check what it did
                    Path(args.logs).mkdir(parents=True, exist_ok=True)
                    log = f"{case.name}-{base.precision}-{framework}-{repeat}.log"
                    shutil.copy(Path(tmp) / f"{framework}.log", Path(args.logs) / log)
                shutil.rmtree(workdir, ignore_errors=True)  # its logs and checkpoints
                runs.append({"framework": framework, "repeat": repeat, **result})
                left = args.repeats * len(frameworks) - len(runs)
                per_run = statistics.mean(r["process_seconds"] for r in runs)
                eta = f", about {left * per_run / 60:.1f} min left" if left else ""
                print(_line(runs[-1], args.repeats, base) + eta, file=sys.stderr)
    summary = summarize(runs)
    doc["measurements"][base.precision] = {
        "machine": {**before, "load_average_after": machine()["load_average"]},
        "settings": {k: v for k, v in base.to_dict().items() if k not in ("data", "workdir", "framework")},
        "data": data,
        "frameworks": frameworks,
        "runs": runs,
        "summary": summary,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    for framework, row in summary.items():
        ratio = f"  {row['vs_plain']:.2f}× plain's" if row["vs_plain"] else ""
        print(f"{framework:>9}: {row['samples_per_s']:8.1f} samples/s (median){ratio}", file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.harness", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=sorted(CASES))
    p.add_argument("--precision", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, help="optimizer steps per run (default: the case's)")
    p.add_argument("--repeats", type=int, default=3, help="runs per framework, interleaved")
    p.add_argument("--out", help="results file (default benchmarks/results/CASE.json)")
    p.add_argument("--frameworks", help=f"comma-separated, of {', '.join(FRAMEWORKS)} (default: the case's)")
    p.add_argument("--warmup", type=int, default=10, help="first steps left out of the throughput")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    p.add_argument("--check-every", type=int, help="steps between accuracy checks (default: the case's)")
    p.add_argument("--val-examples", type=int, help="size of the validation slice (default: the case's)")
    p.add_argument("--target", type=float, help="validation accuracy to time (default: the case's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logs", metavar="DIR", help="keep each run's output here")
    p.add_argument(
        "--bigmodel-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more bigmodel config override (repeatable, recorded): model.* and data.* keys change "
        "the case for every framework, train.* keys bigmodel's loop only, e.g. train.channels_last=false",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # inside a child: prepare, or a framework's name
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def _child(mode: str, settings: Settings, tmp: Path) -> dict[str, Any]:
    """Run ``mode`` (prepare, or one framework's run) in a fresh Python process; return its result."""
    settings_file, result_file, log = (tmp / f"{mode}.{x}" for x in ("settings.json", "result.json", "log"))
    settings_file.write_text(json.dumps(settings.to_dict()))
    result_file.unlink(missing_ok=True)
    threads = str(settings.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "benchmarks.harness", "--worker", mode]
    command += ["--settings", str(settings_file), "--result", str(result_file)]
    began = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code != 0 or not result_file.exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"{tail}\n{mode} failed (exit code {code}); the end of its output is above")
    result = json.loads(result_file.read_text())
    result["process_seconds"] = time.perf_counter() - began
    return result


def _worker(mode: str, settings_file: Path, result_file: Path) -> int:
    import importlib

    import torch

    from benchmarks.cases import Bench, peak_rss_mb, prepare_data

    settings = Settings(**json.loads(settings_file.read_text()))
    torch.set_num_threads(settings.threads)
    if mode == "prepare":
        result = prepare_data(settings, Path(settings.data))
    else:
        run = importlib.import_module(FRAMEWORKS[mode]).run
        result = run(Bench(settings))
        result["peak_rss_mb"] = peak_rss_mb()  # at the very end: the whole run's peak
    result_file.write_text(json.dumps(result))
    return 0


def _line(run: dict[str, Any], repeats: int, s: Settings) -> str:
    reached = run["time_to_target_s"]
    ttt = f"{reached:.1f} s" if reached is not None else "not reached"
    return (
        f"[{run['repeat'] + 1}/{repeats}] {run['framework']:>9}: {run['samples_per_s']:8.1f} samples/s  "
        f"peak RSS {run['peak_rss_mb']:6.0f} MiB  acc≥{s.target}: {ttt}  "
        f"final acc {run['final_accuracy']:.4f}  ({run['process_seconds']:.0f} s in all)"
    )


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for package in ("torch", "pytorch-lightning", "transformers", "accelerate", "bigmodel"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "versions": versions,
        "commit": commit or None,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()),
    }


if __name__ == "__main__":
    sys.exit(main())

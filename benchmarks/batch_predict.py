"""Batch prediction (``bigmodel predict RUN --input FILE|DIR``): its speed against ``bigmodel evaluate`` on a
run's test split, and its peak memory over CSVs of growing length.

    python benchmarks/batch_predict.py RUN [--lines 10000,1000000] [--batch-size 256] [--work DIR]

(a) The test split is written out as the user would give it (a CSV of its texts, or a folder of PNGs
of its images, pixel for pixel), then predicted with ``api.predict_file`` and evaluated with
``api.evaluate``, each in a fresh process: seconds and examples/s end to end (loading the run, reading
and encoding the inputs, the model), evaluate's scoring alone (its data already built), and the top-1
accuracy of each, which agree up to evaluate's precision (bf16 where the CPU has it; predict is fp32).
(b) Text runs: CSVs of N lines made by repeating the test texts, each predicted in a fresh process whose
peak RSS (``ru_maxrss``) is reported: flat in N when memory is bounded.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_LINES = "10000,1000000"


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python benchmarks/batch_predict.py", description=about)
    p.add_argument("run", help="a finished classifier run")
    p.add_argument("--lines", default=DEFAULT_LINES, help=f"(b)'s CSV lengths (default: {DEFAULT_LINES})")
    p.add_argument("--batch-size", type=int, default=256, help="batch prediction's batch size (default: 256)")
    p.add_argument(
        "--work", help="where the inputs and predictions go (default: a temporary folder, removed)"
    )
    p.add_argument("--worker", choices=["evaluate", "predict"], help=argparse.SUPPRESS)
    p.add_argument("--input", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_work(args)))
        return 0
    lines = [int(n.replace("_", "")) for n in args.lines.split(",") if n.strip()]
    if args.batch_size < 1 or any(n < 1 for n in lines):
        p.error("--batch-size and every --lines value must be at least 1")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="batch-predict-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        _benchmark(args.run, work, lines, args.batch_size)
    finally:
        if not args.work:
            shutil.rmtree(work)
    return 0


def _benchmark(run_path: str, work: Path, lines: list[int], batch_size: int) -> None:
    from bigmodel.run import RunDir

    run = RunDir(run_path)
    source, labels, texts = _write_test_split(run, work)
    kind = f"{run.info.kind}, {run.config.model.name}"
    print(f"run {run.root} ({kind}): {len(labels):,} test examples in {source}, batch size {batch_size}")
    evaluated = _worker(run_path, "evaluate")
    predicted = _worker(run_path, "predict", source, batch_size, work / "test.jsonl")
    tops = [json.loads(line)["top"][0]["class"] for line in (work / "test.jsonl").open(encoding="utf-8")]
    accuracy = sum(t == y for t, y in zip(tops, labels, strict=True)) / len(labels)
    n = len(labels)
    print("\n(a) the test split, each in a fresh process")
    print(f"{'':<34}{'seconds':>9}{'examples/s':>12}{'accuracy':>10}{'peak RSS MiB':>14}")
    rows = [
        ("bigmodel evaluate, end to end", evaluated["seconds"], evaluated["accuracy"], evaluated["rss_mib"]),
        ("bigmodel evaluate, scoring only", evaluated["scoring_seconds"], evaluated["accuracy"], None),
        ("predict --input, end to end", predicted["seconds"], accuracy, predicted["rss_mib"]),
    ]
    for what, seconds, acc, rss in rows:
        shown = f"{rss:>14,.0f}" if rss is not None else f"{'':>14}"
        print(f"{what:<34}{seconds:>9.2f}{n / seconds:>12,.0f}{acc:>10.4f}{shown}")
    if texts is None:
        print("\n(b) needs a text run: its CSVs are made of the test texts")
        return
    print("\n(b) predict --input over a CSV of N lines (the test texts repeated), each in a fresh process")
    print(f"{'lines':>12}{'MB':>9}{'seconds':>10}{'examples/s':>12}{'peak RSS MiB':>14}")
    first = None
    for count in lines:
        path = work / f"lines-{count}.csv"
        _write_csv(path, run.config.data.text_column, itertools.islice(itertools.cycle(texts), count))
        result = _worker(run_path, "predict", path, batch_size, work / "lines.jsonl")
        first = first or result["rss_mib"]
        size = path.stat().st_size / 1e6
        print(
            f"{count:>12,}{size:>9,.0f}{result['seconds']:>10.1f}{count / result['seconds']:>12,.0f}"
            f"{result['rss_mib']:>14,.0f}  ({result['rss_mib'] / first - 1:+.1%} against the first)"
        )
        path.unlink()
        (work / "lines.jsonl").unlink()


def _write_test_split(run: Any, work: Path) -> tuple[Path, list[str], list[str] | None]:
    """The run's test split as a user would give it: a CSV of its texts or a folder of its images (PNG,
    the run's own size, so that reading them back gives the same pixels); its labels; its texts."""
    if run.info.kind == "text":
        from bigmodel.data.text import read_table, split_indices

        table = read_table(run.config.data)
        test = split_indices(table, run.config.data.split_seed)[2]
        texts = [table.texts[i] for i in test]
        path = work / "test.csv"
        _write_csv(path, run.config.data.text_column, texts)
        return path, [table.classes[table.labels[i]] for i in test], texts
    from PIL import Image

    from bigmodel.evaluation.scoring import run_data

    split = run_data(run.config, run).test
    folder = work / "test"
    folder.mkdir(exist_ok=True)
    pixels = split.features["pixels"].numpy()
    for i, image in enumerate(pixels):
        Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(
            folder / f"{i:06d}.png"
        )
    return folder, [run.info.classes[int(y)] for y in split.labels], None


def _write_csv(path: Path, column: str, texts: Any) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", column])
        writer.writerows(enumerate(texts, start=1))


def _worker(run: str, what: str, source: Path | None = None, batch: int = 0, out: Path | None = None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), run, "--worker", what]
    if what == "predict":
        argv += ["--input", str(source), "--work", str(out), "--batch-size", str(batch)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def _work(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process: evaluate's test split, or batch prediction of --input into --work."""
    from bigmodel import api

    start = time.perf_counter()
    if args.worker == "evaluate":
        from bigmodel.evaluation.scoring import load_with_data, split_metrics

        loaded, data, device, dtype = load_with_data(args.run)
        model = loaded.model
        built = time.perf_counter()
        metrics = split_metrics(model, data, "test", loaded.config, device, dtype)
        result = {"accuracy": metrics["accuracy"], "scoring_seconds": time.perf_counter() - built}
    else:
        api.predict_file(args.run, args.input, args.work, batch_size=args.batch_size, progress=False)
        result = {}
    result["seconds"] = time.perf_counter() - start
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


if __name__ == "__main__":
    raise SystemExit(main())

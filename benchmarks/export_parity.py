"""ONNX against PyTorch for a list of runs: each run's exporter, opset, largest |Δlogit| and argmax
agreement at the parity gate's inputs, as ``bigmodel export`` records them in export.json.

    python -m benchmarks.export_parity RUN [RUN ...]     # exports the runs that have no RUN/export yet
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bigmodel.api import export


def main() -> int:
    about = __doc__.split("\n\n")[0]
    p = argparse.ArgumentParser(prog="python -m benchmarks.export_parity", description=about)
    p.add_argument("runs", nargs="+", metavar="RUN")
    args = p.parse_args()
    print(
        f"{'run':<24}{'model':<14}{'exporter':<13}{'opset':>6}{'max |Δlogit|':>14}{'agreement':>11}  inputs"
    )
    for run in map(Path, args.runs):
        saved = run / "export" / "export.json"
        record = json.loads(saved.read_text()) if saved.is_file() else export(run)[1]
        parity = record["parity"]
        shapes = ", ".join("x".join(map(str, s)) for s in parity["inputs"])
        print(
            f"{run.name:<24}{record['model']:<14}{record['exporter']:<13}{record['opset']:>6}"
            f"{parity['max_abs_logit_diff']:>14.1e}{parity['argmax_agreement']:>11.0%}  {shapes}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

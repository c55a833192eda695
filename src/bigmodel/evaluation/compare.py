"""``bigmodel compare``: runs side by side, from what each wrote (config.yaml, report.json,
metrics.jsonl) and nothing recomputed, so comparing a dozen runs takes no time and loads no model."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigmodel.errors import UserError
from bigmodel.evaluation.report import fmt, line_figure, page, section, series, table
from bigmodel.run import RunDir


@dataclass
class Comparison:
    labels: list[str]  # one per run: its directory name, or its path where two names are the same
    rows: list[tuple[str, list[str]]]  # (what, one formatted value per run)
    page: Path


def compare_runs(runs: list[str | Path], out: Path = Path("compare.html")) -> Comparison:
    """Tabulate the runs and write the HTML page (the table and their curves overlaid) to ``out``."""
    if len(runs) < 2:
        raise UserError("compare needs at least two runs, e.g. bigmodel compare runs/a runs/b")
    roots = [Path(r) for r in runs]
    resolved = [r.resolve() for r in roots]
    for i, root in enumerate(resolved):
        if root in resolved[:i]:
            raise UserError(f"{roots[i]} is given twice; compare different runs")
    files = [RunDir(root) for root in roots]
    configs = [f.raw_config() for f in files]  # every path checked before anything is written
    histories = [f.history for f in files]
    names = [f.name for f in files]
    labels = [str(r) if names.count(n) > 1 else n for r, n in zip(roots, names, strict=True)]
    columns = [_column(f, c, h) for f, c, h in zip(files, configs, histories, strict=True)]
    rows = [(what, [c[what] for c in columns]) for what in columns[0]]
    panels = [
        (title, [(label, series(h, key)) for label, h in zip(labels, histories, strict=True)])
        for title, key in (
            ("val loss", "val/loss"),
            ("val accuracy", "val/accuracy"),
            ("train loss", "train/loss"),
        )
    ]
    where = "".join(
        f"<li>{html.escape(label)}: {html.escape(str(f.root.resolve()))}</li>"
        for label, f in zip(labels, files, strict=True)
    )
    body = [
        f"<header><h1>Comparison of {len(files)} runs</h1>"
        '<p class="note">from each run\'s config.yaml, report.json and metrics.jsonl; val and test '
        "metrics are those of the best checkpoint</p></header>",
        section("Summary", table(["", *labels], [[what, *values] for what, values in rows])),
        section("Learning curves", line_figure(panels)),
        section("Runs", f"<ul>{where}</ul>"),
    ]
    out.write_text(page(f"bigmodel compare: {', '.join(labels)}", body), encoding="utf-8")
    return Comparison(labels, rows, out)


def _column(run: RunDir, config: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, str]:
    report, optim = run.results, config["optim"]
    val, test = report.get("val", {}), report.get("test", {})
    return {
        "model": config["model"]["name"],
        "optimizer": f"{optim['name']} (lr {optim['lr']:g})",
        "params": fmt(report.get("params"), ","),
        "epochs": str(len(history)),
        "train seconds": fmt(report.get("train_seconds"), ",.1f"),
        "samples/s": fmt(report.get("samples_per_s_median"), ",.0f"),
        "best epoch": fmt(report.get("best_epoch")),
        "val accuracy": fmt(val.get("accuracy"), ".4f"),
        "test accuracy": fmt(test.get("accuracy"), ".4f"),
        "test F1 (macro)": fmt(test.get("f1_macro"), ".4f"),
        "test loss": fmt(test.get("loss"), ".4f"),
    }

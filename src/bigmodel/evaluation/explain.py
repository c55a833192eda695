"""Why a run's classifier chose a class: Integrated Gradients and saliency through Captum, attention
maps, and the pictures and HTML that show them.

Integrated Gradients (Sundararajan et al. 2017) integrates the gradient of the target logit along the
straight path from a baseline to the input, so the attributions add up to f(input) − f(baseline)
(completeness); Captum's convergence delta says how far the numeric integral misses that sum. The
baselines mean "nothing": a black image (pixel value 0, normalised like the data), and for a text the
same positions filled with padding, [CLS]/[SEP] and the attention mask kept. So a score answers "why
this class rather than what the model says to no content at all".

Token ids are discrete, so text is attributed at the word embeddings, ``model.embeddings``, which every
text model has. The bag of n-grams also embeds each hashed n-gram (``model.ngram_embeddings``): both
layers are attributed together, and each n-gram's score is split equally among its n tokens, so the
token scores still add up to f(input) − f(baseline), the baseline's n-grams being those of its padding.

Everything runs where ``RunDir`` loads the model (the CPU), in fp32, in eval mode (no dropout), one
example at a time with its padding trimmed: padding never changes a model's output.
"""

from __future__ import annotations

import html
import io
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.errors import UserError
from bigmodel.models.output import as_output
from bigmodel.run import RunDir
from bigmodel.tasks import task_for

METHODS = ("integrated_gradients", "saliency")
INTERNAL_BATCH = 32  # interpolation steps per forward pass: bounds memory for long texts and large images
FOR, AGAINST = "0,160,0", "220,0,0"  # green: evidence for the target class; red: against it


@dataclass
class Explanation:
    """One input explained for one class: all that the CLI's files and the HTML report draw."""

    input: str  # the image file path or the text (or a label such as "test #17" when built from features)
    kind: str  # "image" or "text"
    target: str  # the class explained (default: the predicted class)
    predicted: str
    probability: float  # probability of `predicted`
    method: str  # "integrated_gradients" or "saliency"
    attributions: torch.Tensor  # image: (H, W), summed over channels, signed; text: (tokens,) signed
    tokens: list[str] | None  # text: the tokens, aligned with attributions (padding dropped)
    delta: float | None  # Captum's convergence delta for integrated gradients, None for saliency
    image: torch.Tensor | None  # image: (C, H, W) in [0, 1] for display (normalisation undone)


# --- attributions ---------------------------------------------------------------------------------


def explain_features(
    run: RunDir,
    features: dict[str, torch.Tensor],
    targets: list[int] | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
    names: list[str] | None = None,
) -> list[Explanation]:
    """Explain each example of a batch that is ready for ``model(**features)`` (a slice of a split, or
    encoded inputs), for its target class index, by default the predicted one."""
    _check_classifier(run)
    _check_options(method, steps)
    n = len(next(iter(features.values())))
    names = names if names is not None else [f"#{i}" for i in range(n)]
    if len(names) != n or (targets is not None and len(targets) != n):
        raise ValueError(f"{n} examples need {n} names and targets")
    classes = run.info.classes
    for t in targets or []:
        if not 0 <= t < len(classes):
            raise UserError(f"target class {t} is out of range; the run has classes 0..{len(classes) - 1}")
    model = run.model
    with torch.no_grad():
        probs = torch.softmax(as_output(model(**features)).logits.float(), dim=1)
    tokenizer = _tokenizer(run) if run.info.kind == "text" else None
    explanations = []
    for i in range(n):
        predicted = int(probs[i].argmax())
        target = predicted if targets is None else targets[i]
        tokens = image = None
        if tokenizer is None:
            attributions, delta, image = _explain_image(
                run, features["pixels"][i : i + 1], target, method, steps
            )
        else:
            ids = features["input_ids"][i, : int(features["attention_mask"][i].sum())]  # padding is last
            attributions, delta = _explain_text(model, ids, target, method, steps, _baseline(ids, tokenizer))
            tokens = tokenizer.convert_ids_to_tokens(ids.tolist())
        explanations.append(
            Explanation(
                input=names[i],
                kind=run.info.kind,
                target=classes[target],
                predicted=classes[predicted],
                probability=float(probs[i, predicted]),
                method=method,
                attributions=attributions.detach(),
                tokens=tokens,
                delta=delta,
                image=image,
            )
        )
    return explanations


def explain_inputs(
    run: RunDir,
    inputs: list[str],
    target: str | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
) -> list[Explanation]:
    """Explain image files (image runs) or texts (text runs), encoded exactly as ``predict`` encodes
    them, for the class named ``target`` (default: each input's predicted class)."""
    targets = _targets(run, target, method, steps, len(inputs))
    return explain_features(run, run.encode(inputs), targets, method, steps, names=inputs)


def _check_classifier(run: RunDir) -> None:
    task_for(run.info).require_classifier(run.root, "explain")


def _check_options(method: str, steps: int) -> None:
    if method not in METHODS:
        raise UserError(f"--method {method} is not known; choose {' or '.join(METHODS)}")
    if steps < 1:
        raise UserError(
            f"--steps must be at least 1 (interpolation steps of integrated gradients), got {steps}"
        )


def _targets(run: RunDir, target: str | None, method: str, steps: int, n: int) -> list[int] | None:
    """The class index of ``target`` for each of n inputs, after every check that needs no model call."""
    _check_classifier(run)
    _check_options(method, steps)
    if target is None:
        return None
    classes = run.info.classes
    if target not in classes:
        raise UserError(f"--target {target} is not a class of this run; its classes: {', '.join(classes)}")
    return [classes.index(target)] * n


def _explain_image(
    run: RunDir, pixels: torch.Tensor, target: int, method: str, steps: int
) -> tuple[torch.Tensor, float | None, torch.Tensor]:
    """Attributions (H, W), delta, and the image (C, H, W) in [0, 1].

    Saliency keeps the gradient's sign (Captum's default takes its absolute value), so both methods
    read the same way: green raises the target logit, red lowers it. It says what a small change of a
    pixel would do, where Integrated Gradients says how much the pixel contributed."""
    from captum.attr import IntegratedGradients, Saliency

    mean = torch.tensor(run.info.mean).view(1, -1, 1, 1)
    std = torch.tensor(run.info.std).view(1, -1, 1, 1)

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return as_output(run.model(pixels=pixels)).logits.float()

    delta = None
    if method == "saliency":
        attributions = Saliency(forward).attribute(pixels.clone().requires_grad_(), target=target, abs=False)
    else:
        black = ((0.0 - mean) / std).expand_as(pixels)
        attributions, deltas = IntegratedGradients(forward).attribute(
            pixels,
            baselines=black,
            target=target,
            n_steps=steps,
            internal_batch_size=INTERNAL_BATCH,
            return_convergence_delta=True,
        )
        delta = float(deltas[0])
    return attributions[0].sum(0), delta, (pixels * std + mean)[0].clamp(0, 1)


def _baseline(ids: torch.Tensor, tokenizer: Any) -> torch.Tensor:
    """The text with every word replaced by padding; the tokens that frame every text stay."""
    framing = {tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id}
    keep = torch.tensor(sorted(i for i in framing if i is not None), dtype=ids.dtype)
    return torch.where(torch.isin(ids, keep), ids, tokenizer.pad_token_id)


def _explain_text(
    model: nn.Module, ids: torch.Tensor, target: int, method: str, steps: int, baseline: torch.Tensor
) -> tuple[torch.Tensor, float | None]:
    """Scores (tokens,) and delta.

    Saliency is Captum's LayerGradientXActivation on the embeddings, summed over the embedding: plain
    Saliency needs a differentiable input, which token ids are not, and gradient × embedding is the
    one-step version of Integrated Gradients from an all-zero embedding (the padding's), signed like it.
    Being local, it can disagree with Integrated Gradients, even in sign, where a deep model saturates."""
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    input_ids, mask = ids[None], torch.ones(1, len(ids), dtype=torch.long)
    layers = model.embedding_layers()

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return as_output(model(input_ids, attention_mask)).logits.float()

    delta = None
    with warnings.catch_warnings():  # token and n-gram embeddings both read the ids, not each other
        warnings.filterwarnings("ignore", message="Multiple layers provided")
        if method == "saliency":
            per_layer = LayerGradientXActivation(forward, layers).attribute(
                input_ids, target=target, additional_forward_args=(mask,)
            )
        else:
            per_layer, deltas = LayerIntegratedGradients(forward, layers).attribute(
                input_ids,
                baselines=baseline[None],
                target=target,
                additional_forward_args=(mask,),
                n_steps=steps,
                internal_batch_size=INTERNAL_BATCH,
                return_convergence_delta=True,
            )
            delta = float(deltas[0])
    scores = per_layer[0][0].sum(-1)  # (L,)
    if len(layers) > 1:  # a bag of n-grams: each n-gram's score goes to its tokens
        scores = scores + _ngram_shares(per_layer[1][0].sum(-1), len(ids), model.ngrams)
    return scores, delta


def _ngram_shares(scores: torch.Tensor, length: int, ngrams: int) -> torch.Tensor:
    """Each n-gram's score split equally among its n tokens, the n-grams in ``hashed_ngrams``' order:
    all bigrams by start position, then all trigrams, and so on."""
    shares = torch.zeros(length)
    start = 0
    for n in range(2, min(ngrams, length) + 1):
        windows = torch.arange(length).unfold(0, n, 1)  # (length-n+1, n): the positions of each n-gram
        shares.index_add_(
            0, windows.flatten(), (scores[start : start + len(windows)] / n).repeat_interleave(n)
        )
        start += len(windows)
    assert start == len(scores), f"{len(scores)} n-gram scores for {start} n-grams: hashed_ngrams changed"
    return shares


def _tokenizer(run: RunDir) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(run.tokenizer_dir))


# --- attention ------------------------------------------------------------------------------------


def attention_maps(run: RunDir, features: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The attention weights of one example (a batch of one, padded or not), one (heads, L, L) tensor per
    layer, trimmed to the real positions: any the model prepends (the transformer's pooling=cls vector)
    come first, then the tokens."""
    _check_classifier(run)
    if not has_attention(run):
        raise UserError(
            f"model {run.config.model.name} has no attention weights to show; "
            "attention maps need an attention, transformer or bert run"
        )
    ids, mask = features["input_ids"], features["attention_mask"]
    if len(ids) != 1:
        raise ValueError(f"attention_maps takes one example, got a batch of {len(ids)}")
    with torch.no_grad():
        maps = run.model(ids, mask, return_attentions=True).attentions
    keep = maps[0].shape[-1] - ids.shape[1] + int(mask.sum())  # prepended positions + real tokens
    return [m[0, :, :keep, :keep].float() for m in maps]


def has_attention(run: RunDir) -> bool:
    """Whether the run's model answers ``forward(..., return_attentions=True)``."""
    return run.model.attention_maps


# --- pictures and HTML ----------------------------------------------------------------------------


def image_heatmap_png(explanation: Explanation) -> bytes:
    """The image, and beside it the image under its attributions, green for the class and red against."""
    from matplotlib.colors import LinearSegmentedColormap
    from matplotlib.figure import Figure

    e = explanation
    if e.image is None:
        raise ValueError("image_heatmap_png needs an image explanation")
    image = e.image.permute(1, 2, 0).numpy()
    gray = image.mean(-1)
    attributions = e.attributions.numpy()
    peak = float(abs(attributions).max()) or 1.0
    cmap = LinearSegmentedColormap.from_list("against-for", ["#dc0000", "#ffffff", "#00a000"])

    fig = Figure(figsize=(7.5, 3.8), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.imshow(image if image.shape[-1] == 3 else gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    left.set_title("input")
    right.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    heat = right.imshow(
        attributions,
        cmap=cmap,
        vmin=-peak,
        vmax=peak,
        alpha=abs(attributions) / peak,
        interpolation="nearest",
    )
    right.set_title("attribution")
    for ax in (left, right):
        ax.set_axis_off()
    fig.colorbar(heat, ax=right, shrink=0.85)
    fig.suptitle(_summary(e))
    return _png(fig)


def text_html(explanation: Explanation) -> str:
    """One span per token on a background of its score's colour and strength, the exact score in its
    title; inline styles only, so it can be dropped into any page as it is."""
    e = explanation
    if e.tokens is None:
        raise ValueError("text_html needs a text explanation")
    scores = e.attributions.tolist()
    peak = max(abs(s) for s in scores) or 1.0
    spans = [
        f'<span title="{s:+.4f}" style="background:rgba({FOR if s > 0 else AGAINST},{abs(s) / peak:.2f});'
        f"color:{'#fff' if abs(s) / peak > 0.55 else '#000'};"  # readable on the strongest colours
        f'padding:1px 2px;border-radius:3px">{html.escape(token)}</span>'
        for token, s in zip(e.tokens, scores, strict=True)
    ]
    header = (
        f'<div style="margin-bottom:6px">{html.escape(_summary(e))}'
        f'<br><small style="color:#555">green: for {html.escape(e.target)}, red: against</small></div>'
    )
    return f'<div style="font-family:sans-serif;line-height:1.9">{header}<div>{" ".join(spans)}</div></div>'


def ranked_tokens(explanation: Explanation, k: int = 10) -> list[tuple[str, float]]:
    """The k tokens that weigh most, for or against (largest absolute score first), with signed scores."""
    if explanation.tokens is None:
        raise ValueError("ranked_tokens needs a text explanation")
    pairs = zip(explanation.tokens, explanation.attributions.tolist(), strict=True)
    return sorted(pairs, key=lambda pair: -abs(pair[1]))[:k]


def attention_png(maps: list[torch.Tensor], tokens: list[str]) -> bytes:
    """Rows are layers, columns heads; queries down, keys across. Positions beyond ``tokens`` at the
    start are the model's own (pooling=cls): they are labelled <pool>."""
    from matplotlib.figure import Figure

    layers, heads, n = len(maps), maps[0].shape[0], maps[0].shape[-1]
    if len(tokens) > n:
        raise ValueError(f"{len(tokens)} tokens for attention over {n} positions")
    labels = ["<pool>"] * (n - len(tokens)) + list(tokens)
    cell = min(2.4, 16 / max(layers, heads))
    fig = Figure(figsize=(cell * heads + 1, cell * layers + 0.6), dpi=100, layout="constrained")
    axes = fig.subplots(layers, heads, squeeze=False)
    for layer, row in enumerate(axes):
        for head, ax in enumerate(row):
            ax.imshow(maps[layer][head].numpy(), cmap="viridis", vmin=0, interpolation="nearest")
            ax.set_title(f"layer {layer + 1} head {head + 1}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if n <= 32:  # beyond that the labels overlap
                if layer == layers - 1:
                    ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
                if head == 0:
                    ax.set_yticks(range(n), labels, fontsize=6)
    fig.suptitle("attention (rows: queries, columns: keys)", fontsize=10)
    return _png(fig)


def _summary(e: Explanation) -> str:
    delta = "" if e.delta is None else f", delta {e.delta:+.2g}"
    return f"class {e.target} | predicted {e.predicted} (p={e.probability:.3f}) | {e.method}{delta}"


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")  # a Figure made without pyplot draws with Agg
    return buffer.getvalue()


# --- files ----------------------------------------------------------------------------------------


def explain_to_files(
    run: RunDir,
    inputs: list[str],
    out: Path,
    target: str | None = None,
    method: str = "integrated_gradients",
    steps: int = 64,
) -> list[tuple[Explanation, list[Path]]]:
    """``bigmodel explain``: each explanation with the files written for it into ``out``. Images:
    ``<stem>-<method>.png``; texts: ``text-<i>.html``; runs with attention also ``<name>-attention.png``."""
    targets = _targets(run, target, method, steps, len(inputs))
    features = run.encode(inputs)
    explanations = explain_features(run, features, targets, method, steps, names=inputs)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (e, name) in enumerate(zip(explanations, _file_names(run, inputs), strict=True)):
        if e.kind == "image":
            paths = [out / f"{name}-{method}.png"]
            paths[0].write_bytes(image_heatmap_png(e))
        else:
            paths = [out / f"{name}.html"]
            paths[0].write_text(_page(e), encoding="utf-8")
            if has_attention(run):
                one = {key: value[i : i + 1] for key, value in features.items()}
                paths.append(out / f"{name}-attention.png")
                paths[1].write_bytes(attention_png(attention_maps(run, one), e.tokens or []))
        written.append(paths)
    return list(zip(explanations, written, strict=True))


def _file_names(run: RunDir, inputs: list[str]) -> list[str]:
    """text-1, text-2, ... for texts; each image's stem, numbered when two files share one."""
    if run.info.kind == "text":
        return [f"text-{i}" for i in range(1, len(inputs) + 1)]
    seen: Counter[str] = Counter()
    names = []
    for path in inputs:
        stem = Path(path).stem
        seen[stem] += 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _page(e: Explanation) -> str:
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>bigmodel explain</title></head>\n'
        f'<body style="max-width:60em;margin:2em auto">\n{text_html(e)}\n</body></html>\n'
    )

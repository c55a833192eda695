"""Metrics: a classifier's from gathered logits and labels with torchmetrics; a language model's as
sums over the batches (its logits, one row per token, are far too many to gather)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_calibration_error,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from bigmodel.data.bundle import IGNORE

# The scalars logged per epoch (metrics.jsonl, TensorBoard) and shown by ``bigmodel evaluate``.
SUMMARY_KEYS = (
    "loss", "accuracy", "top5_accuracy", "f1_macro", "precision_macro", "recall_macro",
    "f1_weighted", "precision_weighted", "recall_weighted", "roc_auc", "ece", "perplexity",
)  # fmt: skip
CALIBRATION_BINS = 15  # torchmetrics' default, and the usual choice since Guo et al. (2017)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Scalars under ``SUMMARY_KEYS``, per-class precision/recall/F1/ROC-AUC/support, the confusion matrix
    (rows: true class) and the reliability diagram's bins.

    ROC-AUC is one-vs-rest, averaged over classes (for two classes it is the usual binary AUC); ECE is
    the expected calibration error of the top-class probability over ``CALIBRATION_BINS`` equal bins."""
    k = len(classes)
    logits = logits.float()
    probs = logits.softmax(dim=1)
    preds = logits.argmax(dim=1)
    scores: dict[str, Any] = {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": multiclass_accuracy(preds, labels, k, average="micro").item(),
    }
    if k > 5:
        scores["top5_accuracy"] = multiclass_accuracy(logits, labels, k, average="micro", top_k=5).item()
    per_class = {
        "precision": multiclass_precision(preds, labels, k, average=None),
        "recall": multiclass_recall(preds, labels, k, average=None),
        "f1": multiclass_f1_score(preds, labels, k, average=None),
        "roc_auc": multiclass_auroc(probs, labels, k, average=None),
        "support": torch.bincount(labels, minlength=k),
    }
    for name, fn in (
        ("precision", multiclass_precision),
        ("recall", multiclass_recall),
        ("f1", multiclass_f1_score),
    ):
        for average in ("macro", "weighted"):
            scores[f"{name}_{average}"] = fn(preds, labels, k, average=average).item()
    scores["roc_auc"] = multiclass_auroc(probs, labels, k, average="macro").item()
    scores["ece"] = multiclass_calibration_error(probs, labels, k, n_bins=CALIBRATION_BINS).item()
    return {
        **scores,
        "per_class": {
            name: {metric: values[i].item() for metric, values in per_class.items()}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, k).tolist(),
        "reliability": reliability_bins(probs, labels),
        "count": len(labels),
    }


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Per confidence bin: mean top-class probability, accuracy and count (None where a bin is empty),
    the points of a reliability diagram. torchmetrics computes ECE from these bins but does not return
    them, hence this short function; its ECE equals torchmetrics' (a test checks)."""
    confidence, preds = probs.max(dim=1)
    correct = (preds == labels).double()
    index = torch.clamp((confidence * bins).ceil().long() - 1, 0, bins - 1)  # (i/bins, (i+1)/bins]
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence.double())
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    mean = [(c / n).item() if n else None for c, n in zip(conf_sum, count, strict=True)]
    accuracy = [(a / n).item() if n else None for a, n in zip(correct_sum, count, strict=True)]
    return {"bins": bins, "confidence": mean, "accuracy": accuracy, "count": count.tolist()}


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}


def language_model_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(summed cross-entropy, predicted tokens, correct predictions) of one batch, float64; ``labels``
    are those that ``logits`` predict (see ``Task.targets``)."""
    targets = labels != IGNORE
    flat = logits.float().flatten(0, -2)
    loss = F.cross_entropy(flat, labels.flatten(), ignore_index=IGNORE, reduction="sum")
    correct = ((logits.argmax(dim=-1) == labels) & targets).sum()
    return torch.stack([loss.double(), targets.sum().double(), correct.double()]).cpu()


def language_model_metrics(sums: torch.Tensor) -> dict[str, Any]:
    """Mean loss per predicted token, its perplexity (exp of the loss) and the token accuracy."""
    loss_sum, targets, correct = sums.tolist()
    loss = loss_sum / max(targets, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": correct / max(targets, 1),
        "count": int(targets),
    }

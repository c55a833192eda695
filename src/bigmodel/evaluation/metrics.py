"""Metrics: a classifier's from gathered logits and labels with torchmetrics; a language model's as
sums over the batches (its logits, one row per token, are far too many to gather)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

SUMMARY_KEYS = ("loss", "accuracy", "f1_macro", "precision_macro", "recall_macro", "perplexity")
IGNORE = -100  # the label of a position that is not predicted (PyTorch and Hugging Face use it too)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Scalars under ``SUMMARY_KEYS``, plus per-class lists and the confusion matrix (rows: true class)."""
    k = len(classes)
    logits = logits.float()
    preds = logits.argmax(dim=1)
    per_class = {
        "precision": multiclass_precision(preds, labels, k, average=None),
        "recall": multiclass_recall(preds, labels, k, average=None),
        "f1": multiclass_f1_score(preds, labels, k, average=None),
    }
    return {
        "loss": F.cross_entropy(logits, labels).item(),
        "accuracy": multiclass_accuracy(preds, labels, k, average="micro").item(),
        "f1_macro": multiclass_f1_score(preds, labels, k, average="macro").item(),
        "precision_macro": multiclass_precision(preds, labels, k, average="macro").item(),
        "recall_macro": multiclass_recall(preds, labels, k, average="macro").item(),
        "per_class": {
            name: {metric: values[i].item() for metric, values in per_class.items()}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, labels, k).tolist(),
        "count": len(labels),
    }


def summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: metrics[key] for key in SUMMARY_KEYS if key in metrics}


def predicted_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The labels that ``logits`` predict: all of them, or, when the model computed logits only at the
    predicted positions (masked LM: (N, vocab) for labels (B, L)), those positions' labels in order."""
    if logits.dim() == 2 and labels.dim() == 2:
        return labels[labels != IGNORE]
    return labels


def language_model_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(summed cross-entropy, predicted tokens, correct predictions) of one batch, float64."""
    labels = predicted_labels(logits, labels)
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

"""Classification metrics, computed with torchmetrics from gathered logits and labels."""

from __future__ import annotations

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

SUMMARY_KEYS = ("loss", "accuracy", "f1_macro", "precision_macro", "recall_macro")


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
    return {key: metrics[key] for key in SUMMARY_KEYS}

"""The metrics agree with scikit-learn's, computed independently on the same predictions."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn import metrics as sk
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bigmodel.tasks.metrics import classification_metrics


def noisy_predictions(classes: int, n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits that are right about half the time, with confidences spread over every bin."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen) * 2
    labels = torch.randint(0, classes, (n,), generator=gen)
    labels[: n // 2] = logits[: n // 2].argmax(1)
    return logits, labels


@pytest.mark.parametrize("classes", [2, 10])
def test_classification_metrics_match_scikit_learn(classes: int):
    logits, labels = noisy_predictions(classes)
    m = classification_metrics(logits, labels, [f"c{i}" for i in range(classes)])
    y, pred, probs = labels.numpy(), logits.argmax(1).numpy(), logits.softmax(1).numpy()
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    for name, fn in (("f1", sk.f1_score), ("precision", sk.precision_score), ("recall", sk.recall_score)):
        for average in ("macro", "weighted"):
            assert m[f"{name}_{average}"] == pytest.approx(fn(y, pred, average=average), abs=1e-5)
    expected_auc = (
        sk.roc_auc_score(y, probs[:, 1]) if classes == 2 else sk.roc_auc_score(y, probs, multi_class="ovr")
    )
    assert m["roc_auc"] == pytest.approx(expected_auc, abs=1e-4)
    if classes > 5:
        assert m["top5_accuracy"] == pytest.approx(sk.top_k_accuracy_score(y, probs, k=5), abs=1e-6)
    else:
        assert "top5_accuracy" not in m
    assert [row["support"] for row in m["per_class"].values()] == np.bincount(y, minlength=classes).tolist()


def test_reliability_bins_give_torchmetrics_ece():
    logits, labels = noisy_predictions(10)
    m = classification_metrics(logits, labels, [str(i) for i in range(10)])
    bins = m["reliability"]
    assert len(bins["count"]) == bins["bins"] == 15 and sum(bins["count"]) == len(labels)
    ece = sum(
        n * abs(c - a)
        for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"], strict=True)
        if n
    ) / len(labels)
    assert ece == pytest.approx(m["ece"], abs=1e-6)
    # Overconfident logits (scaled up) are worse calibrated: the metric can tell.
    sharper = classification_metrics(logits * 5, labels, [str(i) for i in range(10)])
    assert sharper["ece"] > m["ece"] + 0.1


def test_trained_run_logs_and_reports_every_metric(digits_run: Path):
    first = json.loads((digits_run / "metrics.jsonl").read_text().splitlines()[0])
    for key in ("val/top5_accuracy", "val/f1_weighted", "val/roc_auc", "val/ece"):
        assert key in first
    test = json.loads((digits_run / "report.json").read_text())["test"]
    assert test["roc_auc"] > 0.95 and 0 <= test["ece"] < 0.2
    assert test["top5_accuracy"] >= test["accuracy"]
    events = EventAccumulator(str(digits_run), size_guidance={"images": 0})
    events.Reload()
    assert events.Scalars("test/accuracy")[0].value == pytest.approx(test["accuracy"])
    assert {"val/ece", "val/roc_auc", "test/ece"} <= set(events.Tags()["scalars"])
    assert {"test/confusion_matrix", "test/reliability"} <= set(events.Tags()["images"])
    image = events.Images("test/confusion_matrix")[0]
    assert image.width > 200 and image.height > 200

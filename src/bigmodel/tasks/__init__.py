"""What a run is trained to do, decided once from its data: classify, or model language (masked or
causal). A task owns everything that differs between them: which labels the logits predict, the loss,
how a split is evaluated and summed across processes, the default monitored metric, and the headline
that the CLI, the progress bar and the report show. No module outside this one branches on the kind of
data.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel.data.bundle import IGNORE, DataInfo
from bigmodel.data.loader import BatchLoader, move
from bigmodel.device import autocast
from bigmodel.errors import UserError
from bigmodel.models.output import ModelOutput, as_output
from bigmodel.tasks.metrics import (
    SUMMARY_KEYS,
    classification_metrics,
    language_model_metrics,
    language_model_sums,
)

LOGITS_PER_EVAL_BATCH = 2**27  # float32 elements: 512 MiB


class Task:
    """What every task shares: the typed output, cross-entropy over the labels the logits predict."""

    classifier: ClassVar[bool]
    command: ClassVar[str]  # the CLI subcommand that trains it (and resumes it)
    monitor: ClassVar[str]  # the default monitored metric
    summary_keys: ClassVar[tuple[str, ...]]  # what `bigmodel evaluate` lists
    extra_curves: ClassVar[tuple[str, ...]] = ()  # validation metrics the report plots beyond loss, accuracy

    def __init__(self, info: DataInfo):
        self.info = info

    # -- training -----------------------------------------------------------------------------
    def output(self, model: nn.Module, features: dict[str, torch.Tensor]) -> ModelOutput:
        """The model's typed output (a user's module may return bare logits)."""
        return as_output(model(**features))

    def targets(self, out: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """The labels that ``out.logits`` predict, in their order."""
        return labels

    def loss(self, out: ModelOutput, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return F.cross_entropy(
            out.logits.float().flatten(0, -2),  # (examples or tokens, classes or vocabulary)
            labels.flatten(),
            ignore_index=IGNORE,
            label_smoothing=label_smoothing,
        )

    @property
    def tokens_per_example(self) -> int:
        """What the progress bar counts per example: a language model's blocks are full, so tokens."""
        return 1

    @property
    def variable_length(self) -> bool:
        """Whether batches change shape from one to the next (texts padded to their longest)."""
        return self.info.kind == "text"

    def eval_batch_size(self) -> int:
        raise NotImplementedError

    @torch.inference_mode()
    def evaluate(
        self,
        model: nn.Module,
        loader: BatchLoader,
        device: torch.device,
        dtype: torch.dtype,
        channels_last: bool = False,
    ) -> Any:
        """This process's share of a split's evaluation (``batch_result`` of every batch, combined by
        ``share``); ``metrics`` turns every process's share into the split's metrics. The model runs in
        eval mode under autocast, its mode restored afterwards."""
        was_training = model.training
        model.eval()
        results = []
        try:
            for batch in loader:
                batch = move(batch, device, channels_last)
                labels = batch.pop("labels")
                with autocast(device, dtype):
                    results.append(self.batch_result(self.output(model, batch), labels))
        finally:
            model.train(was_training)
        return self.share(results)

    def batch_result(self, out: ModelOutput, labels: torch.Tensor) -> Any:
        raise NotImplementedError

    def share(self, results: list[Any]) -> Any:
        raise NotImplementedError

    def metrics(self, shares: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def summary_line(self, test: dict[str, Any]) -> str:
        """The one line `bigmodel train` ends with."""
        raise NotImplementedError

    def facts(self, test: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """The report's headline figures: label → (value, format)."""
        raise NotImplementedError

    def require_classifier(self, run: Any, what: str) -> None:
        """Refuse, in one line, a tool that needs classes (predict, explain) on a run that has none."""


class Classification(Task):
    classifier = True
    command = "train"
    monitor = "val/accuracy"
    summary_keys = SUMMARY_KEYS

    def eval_batch_size(self) -> int:
        return 1024

    def batch_result(self, out: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (float32, on the CPU) and labels, in order."""
        return out.logits.float().cpu(), labels.cpu()

    def share(self, results: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def metrics(self, shares: list[Any]) -> dict[str, Any]:
        return classification_metrics(*self.share(shares), self.info.classes)

    def summary_line(self, test: dict[str, Any]) -> str:
        return (
            f"test accuracy {test['accuracy']:.4f}  f1_macro {test['f1_macro']:.4f}  "
            f"precision_macro {test['precision_macro']:.4f}  recall_macro {test['recall_macro']:.4f}"
        )

    def facts(self, test: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        return {
            "test accuracy": (test.get("accuracy"), ".4f"),
            "test F1 (macro)": (test.get("f1_macro"), ".4f"),
            "test ECE": (test.get("ece"), ".4f"),
        }


class LanguageModelling(Task):
    classifier = False
    command = "pretrain"
    monitor = "val/loss"
    summary_keys = ("loss", "perplexity", "accuracy")
    extra_curves = ("perplexity",)

    @property
    def tokens_per_example(self) -> int:
        return self.info.input_shape[0]

    @property
    def variable_length(self) -> bool:
        return False  # packed blocks, all of data.max_length tokens

    def targets(self, out: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """With ``prediction_mask`` the model computed logits only at those positions (masked LM)."""
        return labels if out.prediction_mask is None else labels[out.prediction_mask]

    def eval_batch_size(self) -> int:
        """Fewer than a classifier's: the logits are a vocabulary wide at every position, and 1024
        blocks of 128 tokens at 16,000 words are 8.4 GB."""
        per_block = self.info.input_shape[0] * self.info.vocab_size
        return max(1, min(1024, LOGITS_PER_EVAL_BATCH // per_block))

    def batch_result(self, out: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Summed loss, predicted tokens and correct predictions: the logits, one row per token, are far
        too many to keep."""
        return language_model_sums(out.logits, self.targets(out, labels))

    def share(self, results: list[Any]) -> torch.Tensor:
        return torch.stack(results).sum(0)

    def metrics(self, shares: list[Any]) -> dict[str, Any]:
        return language_model_metrics(self.share(shares))

    def summary_line(self, test: dict[str, Any]) -> str:
        return (
            f"test loss {test['loss']:.4f}  perplexity {test['perplexity']:.2f}  "
            f"token accuracy {test['accuracy']:.4f}"
        )

    def facts(self, test: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        return {
            "test loss": (test.get("loss"), ".4f"),
            "test perplexity": (test.get("perplexity"), ".2f"),
            "test token accuracy": (test.get("accuracy"), ".4f"),
        }

    def require_classifier(self, run: Any, what: str) -> None:
        if what == "predict":  # predicting is what generate does for a language model
            raise UserError(
                f"{run} is a pretrained language model, not a classifier: continue text with bigmodel "
                "generate (clm), or fine-tune it with model.name=bert model.pretrained=RUN/hf (mlm)"
            )
        raise UserError(
            f"{run} is a pretrained language model; {what} needs a classifier "
            "(fine-tune it first with model.name=bert model.pretrained=RUN/hf)"
        )


class MaskedLM(LanguageModelling):
    kind = "mlm"


class CausalLM(LanguageModelling):
    kind = "clm"


def task_for(info: DataInfo) -> Task:
    """The one place the kind of data is read."""
    return {"mlm": MaskedLM, "clm": CausalLM}.get(info.kind, Classification)(info)


def generates(task: Task) -> bool:
    """Whether ``bigmodel generate`` can continue text with the task's model."""
    return isinstance(task, CausalLM)

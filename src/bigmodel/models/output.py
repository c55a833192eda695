"""What every model's forward returns: one small typed output, whatever the architecture or task.

A Hugging Face ``ModelOutput`` (a dataclass that is also an ordered dict of its non-None fields), so
that tracing for TensorBoard, DDP, ``torch.compile`` and FSDP all see a structure they know."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
from transformers.utils import ModelOutput as HFModelOutput

from bigmodel.errors import UserError


@dataclass
class ModelOutput(HFModelOutput):
    """``logits``: (batch, classes) for a classifier, (batch, length, vocabulary) for a language model,
    or (predicted positions, vocabulary) where the model computed them only at ``prediction_mask``, the
    (batch, length) positions they belong to. ``attentions``: one (batch, heads, L, L) tensor per layer,
    when asked for."""

    logits: torch.Tensor | None = None
    prediction_mask: torch.Tensor | None = None
    attentions: list[torch.Tensor] | None = None


def as_output(raw: ModelOutput | torch.Tensor) -> ModelOutput:
    """A user's module may return bare logits; the loop and every tool downstream read ``.logits``."""
    return raw if isinstance(raw, ModelOutput) else ModelOutput(logits=raw)


class Model(nn.Module):
    """Every model's base: what it can do beyond its logits, declared by its class, so that explain,
    export and the report read a flag instead of probing attributes and signatures."""

    attention_maps: ClassVar[bool] = False  # forward(..., return_attentions=True) fills ``attentions``
    exports_hf: ClassVar[bool] = False  # ``self.hf`` is a transformers model, saved to RUN/hf
    hf_classifier_family: ClassVar[bool] = False  # ``hf_classifier`` may give a transformers equivalent

    def embedding_layers(self) -> list[nn.Module]:
        """Where a text's attributions are computed: its token embeddings (``self.embeddings``), and any
        other embedding that reads the token ids."""
        return [self.embeddings]

    def fit_data(self, train: Any) -> None:
        """Statistics of the training split (a ``TensorSplit``) that a new model starts from, computed
        once before the first step and saved with its weights (NBSVM's ratios); most models need none."""

    def exporting(self) -> contextlib.AbstractContextManager[None]:
        """The same function in the form an ONNX runtime runs fastest; the default is the model as it is."""
        return contextlib.nullcontext()

    def hf_classifier(self, classes: list[str]) -> Any:
        """The same network as a transformers ``...ForSequenceClassification`` with ``id2label``, for
        ``pipeline("text-classification")``; a ``UserError`` saying why where no transformers class
        computes what this model does."""
        raise UserError(f"no transformers class computes {type(self).__name__}")

"""Language models to pretrain: a BERT with its masked-LM head, and a GPT-2-style decoder.

All are Hugging Face models built from a config (``BertForMaskedLM`` or ``ModernBertForMaskedLM``,
``GPT2LMHeadModel``), so the
pretrained result is saved with ``save_pretrained`` and loads anywhere with ``from_pretrained``.
Same contract as every model here: ``forward(input_ids, attention_mask)`` → a ``ModelOutput``, here
with logits (B, L, vocab), one prediction per position; the loop's cross-entropy skips the positions
labelled -100.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from bigmodel.data.bundle import DataInfo
from bigmodel.models.bert import check_fits, check_heads, encoder_config, load_pretrained, untrained
from bigmodel.models.output import Model, ModelOutput
from bigmodel.models.registry import register_model


class LanguageModel(Model):
    exports_hf = True

    def __init__(self, hf: Any):
        super().__init__()
        self.hf = hf  # the Hugging Face model: what RUN/hf/ holds

    @property
    def pretrained_config(self) -> Any:
        """What a run saves to rebuild the model without the directory it was loaded from."""
        return self.hf.config

    @property
    def embeddings(self) -> nn.Embedding:
        return self.hf.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prediction_mask: torch.Tensor | None = None,
    ) -> ModelOutput:
        """Logits (B, L, vocab); with ``prediction_mask`` (masked LM), only those of the masked
        positions, (N, vocab) in row-major order, with the mask: the vocabulary layer is most of the
        cost of a small BERT, and 85 % of its outputs would be thrown away."""
        if attention_mask is not None and bool(
            attention_mask.all()
        ):  # packed blocks: no mask lets SDPA use its fast kernels
            attention_mask = None
        if prediction_mask is None:
            return ModelOutput(logits=self.hf(input_ids=input_ids, attention_mask=attention_mask).logits)
        hidden = self.hf.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        chosen = prediction_mask.bool()
        return ModelOutput(logits=self.mlm_head(hidden[chosen]), prediction_mask=chosen)

    def mlm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The masked LM's prediction head (transform, then the vocabulary layer) on hidden states."""
        if hasattr(self.hf, "cls"):  # BertForMaskedLM
            return self.hf.cls(hidden)
        return self.hf.decoder(self.hf.head(hidden))  # ModernBertForMaskedLM


@register_model("bert-mlm", "mlm")
def bert_mlm(
    info: DataInfo,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    intermediate_size: int = 1024,
    dropout: float = 0.1,
    attention_dropout: float = 0.0,
    max_positions: int | None = None,
    pretrained: str | None = None,
    encoder: str = "bert",
) -> nn.Module:
    """The ``bert`` classifier's encoder (same default size) with BERT's masked-LM head, whose output
    layer shares the word embeddings; fine-tune it with ``model.name=bert model.pretrained=RUN/hf``.
    Attention dropout is off by default, as in the classifier: on the CPU it forces the slow attention
    kernel (see models/sequence.py).

    Two stages, as BERT itself was pretrained (short blocks first, then long): ``max_positions``
    above ``data.max_length`` leaves room for the longer blocks, and ``pretrained`` (an earlier
    stage's ``RUN/hf``) continues from its weights, whose config replaces the size settings.
    ``encoder=modernbert`` pretrains a ModernBERT instead (see models/bert.py)."""
    from transformers import AutoModelForMaskedLM

    if pretrained is not None:
        hf = load_pretrained(pretrained, AutoModelForMaskedLM)
        check_fits(hf.config, info, pretrained)
        return LanguageModel(hf)
    config = encoder_config(
        info,
        encoder,
        hidden_size,
        layers,
        heads,
        intermediate_size,
        dropout,
        attention_dropout,
        max_positions,
    )
    return LanguageModel(untrained(AutoModelForMaskedLM, config))


@register_model("gpt", "clm")
def gpt(
    info: DataInfo,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    dropout: float = 0.1,
    attention_dropout: float = 0.0,
) -> nn.Module:
    """A GPT-2 decoder (pre-LN blocks, learned positions, output layer tied to the embeddings).
    Attention dropout is off by default, as for ``bert-mlm``."""
    check_heads(hidden_size, heads)
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=info.vocab_size,
        n_positions=info.input_shape[0],
        n_embd=hidden_size,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=attention_dropout,
        pad_token_id=info.pad_token_id,
        bos_token_id=None,  # GPT-2's own 50256 lies outside a trained vocabulary; the run's tokenizer
        eos_token_id=None,  # sets them on export (RUN/hf) and at generation
        attn_implementation="sdpa",
    )
    return LanguageModel(GPT2LMHeadModel(config))

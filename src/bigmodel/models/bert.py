"""BERT for classification: a Hugging Face encoder, dropout and a linear head on its pooled output.

The seed's section 4.2 ``BertClassifier``, done right: the encoder is either built at random from the
settings or loaded with ``from_pretrained`` (a directory saved with ``save_pretrained``, or a hub id),
and it is checked against the data's tokenizer before anything trains. ``encoder`` picks the kind built
at random: ``bert`` (``BertModel``, the original: post-LN, learned absolute positions) or
``modernbert`` (``ModernBertModel``: pre-LN, rotary positions, gated GELU, no biases), which learns
to use its context in far fewer masked-LM steps (docs/pretraining.md). Same contract as the other text
models: ``forward(input_ids, attention_mask)`` → a ``ModelOutput`` with logits (B, classes);
``embeddings`` is the word embedding, and ``return_attentions=True`` adds the attention weights of every
layer.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bigmodel.data.bundle import DataInfo
from bigmodel.errors import UserError
from bigmodel.models.output import Model, ModelOutput
from bigmodel.models.registry import register_model

ENCODERS = ("bert", "modernbert")


POOLINGS = ("cls", "mean", "last")


class BertClassifier(Model):
    attention_maps = True
    hf_classifier_family = True

    def __init__(self, bert: Any, classes: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"model.pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
        self.bert = bert  # a transformers encoder: BertModel, ModernBertModel, ...
        self.pooling = pooling
        width = bert.config.hidden_size
        self.pooler = None
        if pooling == "mean" and getattr(bert, "pooler", None):
            bert.pooler = None  # unused: its weights would never train
        elif pooling == "cls" and not getattr(bert, "pooler", None):
            # BERT's pooler, tanh(W · hidden state of [CLS]), for an encoder that comes without one.
            self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, classes)

    def pooled(self, out: Any, attention_mask: torch.Tensor) -> torch.Tensor:
        """``cls``: BERT's pooled [CLS] vector. ``mean``: the average of the text's token vectors,
        which a masked LM has trained (it never predicts [CLS], so pretraining leaves that untaught).
        ``last``: the last real token's vector (texts are padded on the right), the only one a
        causal decoder such as our ``gpt`` computes from the whole text."""
        if self.pooling == "mean":
            weights = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            return (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1)
        if self.pooling == "last":
            last = attention_mask.sum(1).clamp(min=1) - 1
            return out.last_hidden_state[torch.arange(len(last), device=last.device), last]
        return out.pooler_output if self.pooler is None else self.pooler(out.last_hidden_state[:, 0])

    @property
    def pretrained_config(self) -> Any:
        """The encoder's Hugging Face config, which a run saves to be rebuilt without the directory
        it was loaded from."""
        return self.bert.config

    @property
    def embeddings(self) -> nn.Embedding:
        # A property, not a second registered module: the same weight under two names would be saved
        # twice, and safetensors refuses shared tensors.
        return self.bert.get_input_embeddings()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_attentions: bool = False
    ) -> ModelOutput:
        if not return_attentions:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
            return ModelOutput(logits=self.head(self.dropout(self.pooled(out, attention_mask))))
        # SDPA returns no weights (transformers 5 only warns and returns none), so this one call runs the
        # eager implementation, which computes softmax(QKᵀ/√d + mask) explicitly.
        with self.eager_attention():
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        logits = self.head(self.dropout(self.pooled(out, attention_mask)))
        return ModelOutput(logits=logits, attentions=list(out.attentions))  # each (B, heads, L, L)

    def exporting(self) -> contextlib.AbstractContextManager[None]:
        """Exported, SDPA becomes the same products plus a guard for fully masked rows (IsNaN, Where)
        that costs onnxruntime 15 % of BERT's time; written out, attention has none."""
        return self.eager_attention()

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Attention written out, softmax(QKᵀ/√d + mask), for as long as the context lasts."""
        previous = self.bert.config._attn_implementation
        self.bert.set_attn_implementation("eager")
        try:
            yield
        finally:
            self.bert.set_attn_implementation(previous)

    def hf_classifier(self, classes: list[str]) -> Any:
        """BERT with ``[CLS]`` pooling through its own pooler is ``BertForSequenceClassification``
        exactly: the encoder's weights, and the head as its ``classifier``. ModernBERT's classifier
        pools through a GELU and LayerNorm head, and no transformers BERT mean-pools, so those have none."""
        from transformers import BertForSequenceClassification, BertModel

        if not isinstance(self.bert, BertModel) or self.pooling != "cls" or self.pooler is not None:
            what = f"{type(self.bert).__name__} with {self.pooling} pooling"
            raise UserError(
                f"no transformers sequence classifier computes {what} as bigmodel does (only BERT with its "
                "own [CLS] pooler does); use the ONNX model"
            )
        config = copy.deepcopy(self.bert.config)
        config.num_labels = len(classes)
        config.id2label = dict(enumerate(classes))
        config.label2id = {name: i for i, name in enumerate(classes)}
        config.problem_type = "single_label_classification"
        hf = BertForSequenceClassification(config)
        hf.bert.load_state_dict(self.bert.state_dict())
        hf.classifier.load_state_dict(self.head.state_dict())
        return hf.eval()


def load_pretrained(name: str, kind: Any = None, weights: bool = True) -> Any:
    """``kind`` (a transformers class, default ``AutoModel``: the encoder the directory holds, without
    its task head) loaded from a saved directory or hub id. Without ``weights``, or from a directory
    with a config and no weights (a run's ``pretrained/``, whose checkpoint then fills every weight),
    the same architecture at random."""
    if kind is None:
        from transformers import AutoModel as kind

    try:
        if not weights or _config_only(Path(name)):
            from transformers import AutoConfig

            return kind.from_config(AutoConfig.from_pretrained(name), attn_implementation="sdpa")
        return kind.from_pretrained(name, attn_implementation="sdpa")
    except (OSError, ValueError) as exc:  # missing files, unreachable hub, malformed id or config
        if Path(name).is_dir():
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load pretrained model {name}: {reason}") from None
        raise UserError(
            f"cannot load pretrained model {name}: not a local directory, and the hub is unreachable "
            "offline (or has no such model); give a directory saved with save_pretrained"
        ) from None


def _config_only(directory: Path) -> bool:
    if not (directory / "config.json").is_file():
        return False
    # model.safetensors, pytorch_model.bin, or shards of either
    return not any(f.suffix in (".safetensors", ".bin") for f in directory.iterdir())


def check_fits(config: Any, info: DataInfo, pretrained: str) -> None:
    """A pretrained BERT reads these data only with the tokenizer it learned and within its positions."""
    if config.vocab_size != info.vocab_size:
        raise UserError(
            f"pretrained model {pretrained} has a vocabulary of {config.vocab_size} tokens but "
            f"the data's tokenizer has {info.vocab_size}; set data.tokenizer={pretrained} so the token "
            "ids mean what the model learned"
        )
    if config.max_position_embeddings < info.input_shape[0]:
        raise UserError(
            f"pretrained model {pretrained} reads at most {config.max_position_embeddings} "
            f"tokens; set data.max_length to at most that (it is {info.input_shape[0]})"
        )


def check_heads(hidden_size: int, heads: int) -> None:
    if heads <= 0 or hidden_size % heads:
        raise UserError(f"model.hidden_size={hidden_size} must be a multiple of model.heads={heads}")


def encoder_config(
    info: DataInfo,
    encoder: str,
    hidden_size: int,
    layers: int,
    heads: int,
    intermediate_size: int,
    dropout: float,
    attention_dropout: float,
    max_positions: int | None = None,
) -> Any:
    """The config of an ``encoder`` (one of ``ENCODERS``) sized by these settings and by the data
    (vocabulary, length). ``max_positions`` defaults to the data's length; more lets a later stage
    read longer texts."""
    check_heads(hidden_size, heads)
    if encoder not in ENCODERS:
        raise UserError(f"model.encoder={encoder!r} is not one of {', '.join(ENCODERS)}")
    if max_positions is not None and max_positions < info.input_shape[0]:
        raise UserError(
            f"model.max_positions={max_positions} is shorter than data.max_length={info.input_shape[0]}; "
            "set it to at least that"
        )
    size = dict(
        vocab_size=info.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions or info.input_shape[0],
        pad_token_id=info.pad_token_id,
        attn_implementation="sdpa",
    )
    if encoder == "modernbert":
        from transformers import ModernBertConfig

        return ModernBertConfig(
            **size,
            global_attn_every_n_layers=1,  # every layer attends to the whole block, as BERT's
            embedding_dropout=dropout,
            mlp_dropout=dropout,
            attention_dropout=attention_dropout,
            # ModernBERT's defaults are its own tokenizer's ids (50281...); ours are set on export.
            bos_token_id=None,
            eos_token_id=None,
            cls_token_id=None,
            sep_token_id=None,
        )
    from transformers import BertConfig

    return BertConfig(**size, hidden_dropout_prob=dropout, attention_probs_dropout_prob=attention_dropout)


def untrained(kind: Any, config: Any) -> Any:
    """``kind`` (a transformers Auto class) built from ``config``, with BERT's token-type embedding zeroed.
    BERT adds the embedding of type 0 to every position of a one-segment text: at random, a vector
    shared by all of them, as large as the word's and the position's. From zero, a masked LM leaves the
    plateau of the commonest words: on ``benchmarks/mlm_plateau`` it passes 50 % at step ~400 instead
    of staying at chance for 600."""
    model = kind.from_config(config)
    token_types = getattr(model.base_model.embeddings, "token_type_embeddings", None)
    if token_types is not None:
        with torch.no_grad():
            token_types.weight.zero_()
    return model


@register_model("bert", "text")
def bert(
    info: DataInfo,
    hidden_size: int = 256,
    layers: int = 4,
    heads: int = 4,
    intermediate_size: int = 1024,
    dropout: float = 0.3,
    attention_dropout: float = 0.0,
    pretrained: str | None = None,
    encoder: str = "bert",
    pooling: str = "cls",
    random_init: bool = False,
) -> nn.Module:
    """A small BERT (4 layers × 256, 7.4M weights with a 16k vocabulary) trained from scratch, or, with
    ``pretrained``, a saved encoder (of any kind ``AutoModel`` reads, a ``gpt`` run's decoder too)
    whose own config replaces the size settings and ``encoder``. ``random_init`` builds that encoder
    at random instead: the control that says what its pretraining added. The classifier's dropout is
    ``dropout``; the encoder's own is 0.1."""
    if pretrained is not None:
        loaded = load_pretrained(pretrained, weights=not random_init)
        check_fits(loaded.config, info, pretrained)
        return BertClassifier(loaded, info.num_classes, dropout, pooling)
    if random_init:
        raise UserError(
            "model.random_init=true builds model.pretrained's architecture at random; set model.pretrained "
            "to a saved model's directory (without it the encoder is random already)"
        )

    from transformers import AutoModel  # imported here: transformers takes seconds to import

    config = encoder_config(
        info, encoder, hidden_size, layers, heads, intermediate_size, 0.1, attention_dropout
    )
    return BertClassifier(untrained(AutoModel, config), info.num_classes, dropout, pooling)

"""Text classifiers, small to large: a bag of n-grams, recurrent networks, the seed's one-layer
self-attention model, and a transformer encoder.

Every model takes ``input_ids`` (B, L) and ``attention_mask`` (B, L) — 1 for a real token, 0 for
padding, padding always at the end — and returns logits (B, classes). Padding never changes the
result: it is masked out of every sum, attention and recurrence. Every model keeps its token embedding
as ``self.embeddings`` (an ``nn.Embedding``), which Integrated Gradients interpolates; the attention
models also answer ``forward(..., return_attentions=True)`` with ``attentions`` in their output, a list
per layer of (B, heads, L, L) weights, computed explicitly (the training path uses the fused kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from bigmodel.data.bundle import DataInfo
from bigmodel.data.loader import TensorSplit
from bigmodel.errors import UserError
from bigmodel.models.output import Model, ModelOutput
from bigmodel.models.registry import register_model


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x (B, L, D) over the positions where mask (B, L) is true → (B, D)."""
    mask = mask.unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def init_weights(module: nn.Module) -> None:
    """GPT-2/BERT init, as in nanoGPT: N(0, 0.02) for every Linear and Embedding, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


# --- bag of n-grams -------------------------------------------------------------------------------


class BagOfNgrams(Model):
    """fastText (Joulin et al. 2016): the mean of the embeddings of every token and every n-gram of
    consecutive tokens, the n-grams hashed into ``buckets`` rows so no n-gram vocabulary is needed;
    dropout and a linear head. Word order beyond n tokens is ignored, which is why it is fast."""

    def embedding_layers(self) -> list[nn.Module]:
        return [self.embeddings] + ([self.ngram_embeddings] if self.ngram_embeddings is not None else [])

    PRIME = 1_000_003  # multiplier of the rolling hash; buckets * PRIME + vocab stays far below 2**63

    def __init__(
        self, vocab: int, pad: int, classes: int, embed_dim: int, ngrams: int, buckets: int, dropout: float
    ):
        super().__init__()
        self.ngrams, self.buckets = ngrams, buckets
        self.embeddings = nn.Embedding(vocab, embed_dim, padding_idx=pad)
        self.ngram_embeddings = nn.Embedding(buckets, embed_dim) if ngrams > 1 else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, classes)

    def hashed_ngrams(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket ids (B, M) of every 2..ngrams-gram, and whether each lies wholly on real tokens."""
        ids, valid = [], []
        for n in range(2, self.ngrams + 1):
            if input_ids.shape[1] < n:
                break
            windows = input_ids.unfold(1, n, 1)  # (B, L-n+1, n): the n-grams starting at each position
            h = torch.full_like(windows[..., 0], n)  # seeded with n: a bigram and a trigram hash apart
            for j in range(n):
                h = (h * self.PRIME + windows[..., j]) % self.buckets
            ids.append(h)
            valid.append(mask.unfold(1, n, 1).all(-1))
        if not ids:
            return input_ids[:, :0], mask[:, :0]
        return torch.cat(ids, 1), torch.cat(valid, 1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        mask = attention_mask.bool()
        features, keep = self.embeddings(input_ids), mask  # (B, L, D), (B, L)
        if self.ngram_embeddings is not None:
            ngram_ids, ngram_keep = self.hashed_ngrams(input_ids, mask)
            features = torch.cat([features, self.ngram_embeddings(ngram_ids)], 1)  # (B, L+M, D)
            keep = torch.cat([mask, ngram_keep], 1)
        return ModelOutput(logits=self.head(self.dropout(masked_mean(features, keep))))


def distinct_positions(ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """One kept position for each distinct id in its row: a text's features counted once
    (present or not), as NBSVM's binarized features are."""
    marked = torch.where(keep, ids, torch.full_like(ids, -1))
    ordered, order = marked.sort(dim=1)  # which copy counts does not matter: they weigh the same
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.zeros_like(first).scatter(1, order, first) & keep


class NaiveBayesLinear(BagOfNgrams):
    """NBSVM (Wang & Manning 2012) trained as logistic regression: a linear classifier over the presence of
    each token and hashed n-gram, each feature scaled, per class, by its Naive-Bayes log-count ratio
    r = log((p / |p|) / (q / |q|)), where p counts the training texts of the class that hold the feature
    and q those of the other classes, both plus ``alpha``. The ratios come from the training split before
    the first step (``fit_data``) and are saved with the weights, so a resumed or loaded run scores alike.
    The embeddings are one weight per feature and class; they start at zero (the problem is convex)."""

    def __init__(self, vocab: int, pad: int, classes: int, ngrams: int, buckets: int, alpha: float):
        super().__init__(vocab, pad, classes, classes, ngrams, buckets, 0.0)
        self.alpha = alpha
        del self.head, self.dropout
        self.bias = nn.Parameter(torch.zeros(classes))
        self.register_buffer("token_ratios", torch.ones(vocab, classes))
        self.register_buffer("ngram_ratios", torch.ones(buckets if ngrams > 1 else 0, classes))
        for table in self.embedding_layers():
            nn.init.zeros_(table.weight)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        mask = attention_mask.bool()
        keep = distinct_positions(input_ids, mask)
        scores = self.embeddings(input_ids) * self.token_ratios[input_ids]  # (B, L, C)
        logits = (scores * keep[..., None]).sum(1) + self.bias
        if self.ngram_embeddings is not None:
            ngram_ids, ngram_keep = self.hashed_ngrams(input_ids, mask)
            ngram_keep = distinct_positions(ngram_ids, ngram_keep)
            ngram_scores = self.ngram_embeddings(ngram_ids) * self.ngram_ratios[ngram_ids]
            logits = logits + (ngram_scores * ngram_keep[..., None]).sum(1)
        return ModelOutput(logits=logits)

    @torch.no_grad()
    def fit_data(self, train: TensorSplit) -> None:
        classes = self.bias.shape[0]
        counts = [torch.zeros(classes, len(self.token_ratios)), torch.zeros(classes, len(self.ngram_ratios))]
        for start in range(0, len(train), 1024):
            rows = torch.arange(start, min(start + 1024, len(train)))
            batch = train.take(rows)
            ids, mask = batch.features["input_ids"].long(), batch.features["attention_mask"].bool()
            labels = batch.labels[:, None]
            found = [(ids, distinct_positions(ids, mask))]
            if self.ngram_embeddings is not None:
                ngram_ids, ngram_keep = self.hashed_ngrams(ids, mask)
                found.append((ngram_ids, distinct_positions(ngram_ids, ngram_keep)))
            for count, (where, present) in zip(counts, found, strict=False):
                count.index_put_((labels.expand_as(where), where), present.float(), accumulate=True)
        for ratios, count in zip((self.token_ratios, self.ngram_ratios), counts, strict=True):
            if not count.numel():
                continue
            p = count + self.alpha  # (C, F): texts of each class holding each feature
            q = count.sum(0, keepdim=True) - count + self.alpha  # ... of the other classes
            ratios.copy_((torch.log(p / p.sum(1, keepdim=True)) - torch.log(q / q.sum(1, keepdim=True))).T)


# --- recurrent networks ---------------------------------------------------------------------------


class Recurrent(Model):
    """An embedding, stacked RNN/LSTM/GRU layers (optionally bidirectional) that read only the real
    tokens (packed sequences), pooling over time, dropout and a linear head.

    Pooling "last" takes the final state: for a bidirectional network the forward direction's state
    after the last real token and the backward direction's after the first. "mean" and "max" pool the
    top layer's outputs over the real tokens."""

    CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(
        self,
        cell: str,
        vocab: int,
        pad: int,
        classes: int,
        embed_dim: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
        pooling: str,
    ):
        super().__init__()
        self.pooling = pooling
        self.embeddings = nn.Embedding(vocab, embed_dim, padding_idx=pad)
        self.rnn = self.CELLS[cell](
            embed_dim,
            hidden,
            num_layers=layers,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,  # between layers only; torch warns when there is one
            batch_first=True,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        B, L = input_ids.shape
        # A sequence needs at least one step to be packed; an empty one reads its first (pad) token.
        lengths = attention_mask.sum(1).long().clamp(min=1)
        packed = pack_padded_sequence(
            self.embeddings(input_ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, state = self.rnn(packed)
        if self.pooling == "last":
            h_n = state[0] if isinstance(state, tuple) else state  # LSTM returns (h_n, c_n)
            dirs = 2 if self.rnn.bidirectional else 1
            # h_n: (layers*dirs, B, H); packing makes each sequence's final state its real last step.
            pooled = h_n.view(self.rnn.num_layers, dirs, B, -1)[-1].transpose(0, 1).reshape(B, -1)
        else:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, dirs*H)
            mask = torch.arange(L, device=lengths.device) < lengths.unsqueeze(1)  # (B, L)
            if self.pooling == "mean":
                pooled = masked_mean(out, mask)
            else:
                pooled = out.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        return ModelOutput(logits=self.head(self.dropout(pooled)))


# --- attention ------------------------------------------------------------------------------------


def key_padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) → (B, 1, 1, L) booleans: every query of every head may attend to the real keys of its own
    sequence. (The seed built one mask for the whole batch, so padding leaked between examples.)"""
    return attention_mask.bool()[:, None, None, :]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """Vaswani et al. (2017): (length, dim), sin on even features and cos on odd, wavelengths 2π…10000·2π."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention over the real keys. ``need_weights=True`` computes softmax(QKᵀ/√d)
    explicitly and returns the weights (B, heads, L, L); otherwise the fused kernel, which returns none.

    Dropout on the attention weights is its own setting, off by default: on the CPU any of it makes
    PyTorch leave the fused kernel for the step-by-step one (3× slower training of `transformer` and
    3× the activation memory, measured with ``bigmodel profile``)."""

    def __init__(self, dim: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads, self.attention_dropout = heads, attention_dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, L, D = x.shape
        # (B, L, D) → (B, heads, L, head_dim)
        q, k, v = (
            p(x).view(B, L, self.heads, D // self.heads).transpose(1, 2)
            for p in (self.query, self.key, self.value)
        )
        p_drop = self.attention_dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.heads)  # (B, heads, L, L)
            # finfo.min rather than -inf: a row with no real key becomes uniform instead of NaN.
            weights = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min).softmax(-1)
            y = F.dropout(weights, p_drop) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p_drop)
        y = y.transpose(1, 2).reshape(B, L, D)  # heads side by side again
        return self.resid_dropout(self.proj(y)), weights


class SeedAttention(Model):
    """The seed's section 3.4: embeddings plus learned positions, one self-attention layer with a
    residual connection and LayerNorm, the mean over real tokens, a linear head."""

    attention_maps = True

    def __init__(
        self,
        vocab: int,
        pad: int,
        classes: int,
        max_len: int,
        dim: int,
        heads: int,
        dropout: float,
        attention_dropout: float,
    ):
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim, padding_idx=pad)
        self.positions = nn.Embedding(max_len, dim)
        self.attention = SelfAttention(dim, heads, dropout, attention_dropout)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)
        init_weights(self)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_attentions: bool = False
    ) -> ModelOutput:
        L = input_ids.shape[1]
        x = self.embeddings(input_ids) + self.positions.weight[:L]  # (B, L, D)
        a, weights = self.attention(x, key_padding_mask(attention_mask), return_attentions)
        x = self.norm(x + a)
        logits = self.head(self.dropout(masked_mean(x, attention_mask.bool())))
        return ModelOutput(logits=logits, attentions=[weights] if return_attentions else None)


class MLP(nn.Module):
    def __init__(self, dim: int, ff_mult: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, ff_mult * dim)
        self.proj = nn.Linear(ff_mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """A pre-LN transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads, dropout, attention_dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, ff_mult, dropout)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, weights = self.attention(self.ln1(x), key_mask, need_weights)
        x = x + a
        return x + self.mlp(self.ln2(x)), weights


class Transformer(Model):
    """A transformer encoder for classification, nanoGPT-style: token embeddings plus sinusoidal or
    learned positions, pre-LN blocks, a final LayerNorm, then the CLS vector or the mean of the real
    tokens, dropout and a linear head.

    With pooling "cls" a learned vector is prepended, so the attentions returned are over L+1
    positions, the CLS first; ``prefix_tokens`` says how many positions were prepended."""

    attention_maps = True

    def __init__(
        self,
        vocab: int,
        pad: int,
        classes: int,
        max_len: int,
        dim: int,
        layers: int,
        heads: int,
        ff_mult: int,
        dropout: float,
        attention_dropout: float,
        positions: str,
        pooling: str,
    ):
        super().__init__()
        self.pooling = pooling
        self.prefix_tokens = 1 if pooling == "cls" else 0
        self.embeddings = nn.Embedding(vocab, dim, padding_idx=pad)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        n_positions = max_len + self.prefix_tokens
        self.position_embeddings = nn.Embedding(n_positions, dim) if positions == "learned" else None
        # Fixed, so not saved with the weights: it is rebuilt identically from the settings.
        sinusoid = sinusoidal_positions(n_positions, dim) if positions == "sinusoidal" else None
        self.register_buffer("sinusoid", sinusoid, persistent=False)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(dim, heads, ff_mult, dropout, attention_dropout) for _ in range(layers)
        )
        self.ln_f = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)
        self._init_weights()

    def _init_weights(self) -> None:
        init_weights(self)
        if self.cls is not None:
            nn.init.normal_(self.cls, mean=0.0, std=0.02)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_attentions: bool = False
    ) -> ModelOutput:
        mask = attention_mask.bool()
        x = self.embeddings(input_ids)  # (B, L, D)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)  # (B, 1+L, D)
            mask = torch.cat([mask.new_ones(mask.shape[0], 1), mask], 1)
        positions = self.sinusoid if self.position_embeddings is None else self.position_embeddings.weight
        x = self.drop(x + positions[: x.shape[1]])
        key_mask = key_padding_mask(mask)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, key_mask, return_attentions)
            attentions.append(weights)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.cls is not None else masked_mean(x, mask)
        logits = self.head(self.dropout(pooled))
        return ModelOutput(logits=logits, attentions=attentions if return_attentions else None)


# --- builders -------------------------------------------------------------------------------------


def _heads_divide(dim: int, heads: int, model: str) -> None:
    if heads <= 0 or dim % heads:
        raise UserError(f"model.dim={dim} must be a multiple of model.heads={heads} for model {model!r}")


def _check_ngrams(ngrams: int, buckets: int) -> None:
    if ngrams < 1:
        raise UserError(f"model.ngrams={ngrams} must be at least 1 (1 = tokens only, 2 = add bigrams)")
    if not 0 < buckets <= 2**31:
        raise UserError(f"model.buckets={buckets} must be between 1 and 2**31")


@register_model("bow", "text")
def bow(
    info: DataInfo, embed_dim: int = 64, ngrams: int = 2, buckets: int = 2**18, dropout: float = 0.2
) -> nn.Module:
    # 2**18 buckets × 64 = 17M weights (67 MB, 270 MB with Adam's state): room for IMDB's common
    # bigrams, while the optimizer step over the table stays cheap on two cores.
    _check_ngrams(ngrams, buckets)
    return BagOfNgrams(
        info.vocab_size, info.pad_token_id, info.num_classes, embed_dim, ngrams, buckets, dropout
    )


@register_model("nbsvm", "text")
def nbsvm(info: DataInfo, ngrams: int = 2, buckets: int = 2**20, alpha: float = 1.0) -> nn.Module:
    _check_ngrams(ngrams, buckets)
    if alpha <= 0:
        raise UserError(f"model.alpha={alpha} must be above 0 (Naive Bayes' smoothing count; 1 is usual)")
    return NaiveBayesLinear(info.vocab_size, info.pad_token_id, info.num_classes, ngrams, buckets, alpha)


def _recurrent_builder(cell: str) -> Callable[..., nn.Module]:
    """One builder per cell type, with the same settings: rnn, lstm and gru differ only in the cell."""

    def build(
        info: DataInfo,
        embed_dim: int = 128,
        hidden: int = 128,
        layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.3,
        pooling: Literal["last", "mean", "max"] = "max",
    ) -> nn.Module:
        return Recurrent(
            cell,
            info.vocab_size,
            info.pad_token_id,
            info.num_classes,
            embed_dim,
            hidden,
            layers,
            bidirectional,
            dropout,
            pooling,
        )

    return build


for _cell in Recurrent.CELLS:
    register_model(_cell, "text")(_recurrent_builder(_cell))


@register_model("attention", "text")
def attention(
    info: DataInfo, dim: int = 128, heads: int = 1, dropout: float = 0.1, attention_dropout: float = 0.0
) -> nn.Module:
    _heads_divide(dim, heads, "attention")
    return SeedAttention(
        info.vocab_size,
        info.pad_token_id,
        info.num_classes,
        info.input_shape[0],
        dim,
        heads,
        dropout,
        attention_dropout,
    )


@register_model("transformer", "text")
def transformer(
    info: DataInfo,
    dim: int = 128,
    layers: int = 2,
    heads: int = 4,
    ff_mult: int = 4,
    dropout: float = 0.1,
    attention_dropout: float = 0.0,
    positions: Literal["sinusoidal", "learned"] = "sinusoidal",
    pooling: Literal["cls", "mean"] = "mean",
) -> nn.Module:
    _heads_divide(dim, heads, "transformer")
    return Transformer(
        info.vocab_size,
        info.pad_token_id,
        info.num_classes,
        info.input_shape[0],
        dim,
        layers,
        heads,
        ff_mult,
        dropout,
        attention_dropout,
        positions,
        pooling,
    )

"""Texts for pretraining: the training texts alone, packed into blocks of the context length.

The texts are those of the classification splits (same files, same seeded 80/10/10 split), so a model
pretrained here has never read the validation or test texts that its fine-tuned classifier is scored on.
Labels are not used. Every text is tokenized (``[CLS] text [SEP]``), the ids are concatenated and cut
into blocks of ``data.max_length`` tokens, as Hugging Face's ``run_mlm.py`` and ``run_clm.py`` do:
no padding, every position trains.

- ``mlm``: the training transform picks 15 % of the ordinary tokens of each batch, from that batch's
  own generator, so a resumed run masks exactly as the uninterrupted one; validation and test are
  masked once, with a fixed seed, so their loss is comparable from epoch to epoch.
- ``clm``: inputs are a block, labels the same block one token later.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from bigmodel.config import DataConfig
from bigmodel.data.bundle import IGNORE, DataBundle, DataInfo, sample
from bigmodel.data.loader import TensorSplit
from bigmodel.data.text import read_table, split_indices, text_tokenizer
from bigmodel.errors import UserError

EVAL_MASK_SEED = 1234


class MaskTokens:
    """BERT's masking: of the ordinary tokens, ``prob`` are predicted; of those, 80 % become
    ``[MASK]``, 10 % a random token, 10 % stay. Special tokens are never chosen.

    Written here rather than taken from ``DataCollatorForLanguageModeling``, which draws from the
    global RNG: a per-batch generator is what makes a resumed run mask the same tokens."""

    def __init__(self, mask_id: int, vocab_size: int, special_ids: list[int], prob: float):
        self.mask_id, self.vocab_size, self.prob = mask_id, vocab_size, prob
        self.special_ids = torch.tensor(sorted(special_ids))

    def __call__(
        self, features: dict[str, torch.Tensor], gen: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        ids = features["input_ids"].long()
        chosen = (torch.rand(ids.shape, generator=gen) < self.prob) & ~torch.isin(ids, self.special_ids)
        labels = torch.where(chosen, ids, IGNORE)
        action = torch.rand(ids.shape, generator=gen)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=gen)
        masked = torch.where(chosen & (action < 0.8), self.mask_id, ids)
        masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
        # prediction_mask: the model computes the vocabulary logits at these 15 % of positions only.
        return {
            "input_ids": masked,
            "attention_mask": torch.ones_like(masked),
            "prediction_mask": chosen,
            "labels": labels,
        }


def as_model_inputs(
    features: dict[str, torch.Tensor], gen: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Packed blocks have no padding: every position is attended to."""
    ids = features["input_ids"].long()
    return {**features, "input_ids": ids, "attention_mask": torch.ones_like(ids)}


def build_lm_data(cfg: DataConfig) -> DataBundle:
    texts = split_texts(cfg)
    tokenizer = text_tokenizer(cfg, texts["train"])
    if cfg.objective == "mlm" and tokenizer.mask_token_id is None:
        raise UserError(f"tokenizer {cfg.tokenizer} has no mask token; masked-LM pretraining needs one")
    block = cfg.max_length + (1 if cfg.objective == "clm" else 0)  # clm: one more for the shifted labels
    splits = {}
    for name in ("train", "val", "test"):
        blocks = pack(texts[name], tokenizer, block)
        if len(blocks) == 0:
            raise UserError(
                f"the {name} texts hold fewer than data.max_length={cfg.max_length} tokens in all; "
                "lower data.max_length or give more text"
            )
        splits[name] = blocks
    special = list(tokenizer.all_special_ids)
    masker = MaskTokens(tokenizer.mask_token_id or 0, len(tokenizer), special, cfg.mask_prob)
    if cfg.objective == "mlm":
        evaluation = {
            name: masker({"input_ids": splits[name]}, _eval_generator()) for name in ("val", "test")
        }
        ready = {
            name: TensorSplit(
                {"input_ids": e["input_ids"], "prediction_mask": e["prediction_mask"]}, e["labels"]
            )
            for name, e in evaluation.items()
        }
        ready["train"] = TensorSplit({"input_ids": splits["train"]}, torch.zeros(len(splits["train"])))
        train_transform = masker
    else:
        ready = {name: TensorSplit({"input_ids": b[:, :-1]}, b[:, 1:].long()) for name, b in splits.items()}
        train_transform = as_model_inputs
    tokens = sum(int(b.numel()) for b in splits.values())
    print(
        f"{cfg.objective}: {len(splits['train']):,} training blocks of {cfg.max_length} tokens "
        f"({tokens:,} tokens in all splits)",
        file=sys.stderr,
    )
    info = DataInfo(
        kind=cfg.objective,
        classes=[],
        input_shape=[cfg.max_length],
        source=cfg.path or str(cfg.name),
        vocab_size=len(tokenizer),
        pad_token_id=int(tokenizer.pad_token_id),
    )
    return DataBundle(
        train=ready["train"],
        val=ready["val"],
        test=ready["test"],
        info=info,
        train_transform=train_transform,
        eval_transform=as_model_inputs,
        tokenizer=tokenizer,
    )


def split_texts(cfg: DataConfig) -> dict[str, list[str]]:
    """The texts of each split; ``data.name=imdb+rotten-tomatoes`` joins sets, each split as on its own."""
    sources = [cfg] if cfg.path else [cfg.model_copy(update={"name": n}) for n in str(cfg.name).split("+")]
    texts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for source in sources:
        table = read_table(source)
        train, val, test = split_indices(table, cfg.split_seed)
        for name, index in (("train", train), ("val", val), ("test", test)):
            texts[name] += [table.texts[i] for i in index]
    kept = sample(np.arange(len(texts["train"])), cfg.limit, cfg.split_seed)
    texts["train"] = [texts["train"][i] for i in kept]
    return texts


def pack(texts: list[str], tokenizer: object, block: int) -> torch.Tensor:
    """All texts, tokenized with their special tokens, concatenated and cut into (N, block) int32; the
    tail shorter than a block is dropped."""
    # verbose=False: texts longer than one block are the point here, not a mistake to warn about.
    encoded = tokenizer(texts, add_special_tokens=True, return_attention_mask=False, verbose=False)  # type: ignore[operator]
    ids = encoded["input_ids"]
    flat = torch.tensor([t for row in ids for t in row], dtype=torch.int32)
    n = len(flat) // block
    return flat[: n * block].view(n, block)


def _eval_generator() -> torch.Generator:
    return torch.Generator().manual_seed(EVAL_MASK_SEED)

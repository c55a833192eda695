"""How many steps a masked LM needs before it uses its context, on a task any encoder should learn fast.

    python -m benchmarks.mlm_plateau --model hf-bert|hf-roberta-preln|hf-modernbert|torch-post|torch-pre
        [--steps 600] [--parts embed-norm,final-norm,bert-head,tied,gelu,hf-init | --parts zero-token-type]

Sequences of 32 tokens drawn at random from 1,000 ids, each id twice in a row (a a b b c c ...), 15 % of
the positions replaced by [MASK]. A masked token is the other token of its pair, so a model that attends
to its neighbour gets it right, and one that does not stays at chance (loss ln 995 ≈ 6.9). Every model
here is 4 layers × 256, 4 heads, feed-forward 1024, no dropout, trained with AdamW on batches of 64.

Why: on IMDB, bigmodel's small BERT sat on the plateau of the commonest words for thousands of steps
(issue 5). This separates the model from the data. It found the cause: the randomly initialised
token-type embedding, which ``--parts zero-token-type`` zeroes in an hf-* model, as bigmodel's BERTs
now start. The figures are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from bigmodel.models.bert import untrained

VOCAB, LENGTH, BATCH, WIDTH, LAYERS, HEADS, FFN, MASK = 1000, 32, 64, 256, 4, 4, 1024, 1


PARTS = ("embed-norm", "final-norm", "bert-head", "tied", "gelu", "hf-init")


class TorchEncoder(nn.Module):
    """PyTorch's ``nn.TransformerEncoder`` with learned positions (std 0.02, as BERT's) and a linear head;
        ``parts`` adds pieces of Hugging Face's BERT/RoBERTa one at a time: a LayerNorm on the embeddings, one
        after the last layer, BERT's prediction-head transform (dense, GELU, LayerNorm), an output layer tied
        to the embeddings, GELU in the feed-forward layers, Hugging Face's initialisation (every weight matrix
    normal with std 0.02, biases 0) instead of PyTorch's."""

    def __init__(self, pre_norm: bool, parts: set[str]):
        super().__init__()
        self.tokens, self.positions = nn.Embedding(VOCAB, WIDTH), nn.Embedding(LENGTH, WIDTH)
        for table in (self.tokens, self.positions):
            nn.init.normal_(table.weight, std=0.02)
        activation = "gelu" if "gelu" in parts else "relu"
        layer = nn.TransformerEncoderLayer(
            WIDTH, HEADS, FFN, 0.0, activation, batch_first=True, norm_first=pre_norm
        )
        self.encoder = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)
        self.embed_norm = nn.LayerNorm(WIDTH) if "embed-norm" in parts else nn.Identity()
        self.final_norm = nn.LayerNorm(WIDTH) if "final-norm" in parts else nn.Identity()
        self.transform = (
            nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.LayerNorm(WIDTH))
            if "bert-head" in parts
            else nn.Identity()
        )
        self.head = nn.Linear(WIDTH, VOCAB)
        if "hf-init" in parts:
            for name, weight in self.named_parameters():
                if weight.ndim == 2 and not name.startswith(("tokens", "positions")):
                    nn.init.normal_(weight, std=0.02)
                elif name.endswith("bias"):
                    nn.init.zeros_(weight)
        if "tied" in parts:
            self.head.weight = self.tokens.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.tokens(input_ids) + self.positions.weight[: input_ids.shape[1]])
        return self.head(self.transform(self.final_norm(self.encoder(x))))


class Logits(nn.Module):
    """A Hugging Face masked LM as a module that maps ids to logits, like ``TorchEncoder``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=input_ids).logits


def build(name: str, parts: set[str]) -> nn.Module:
    if name.startswith("torch-"):
        return TorchEncoder(name == "torch-pre", parts)
    import transformers

    kind = {"hf-bert": "Bert", "hf-roberta-preln": "RobertaPreLayerNorm", "hf-modernbert": "ModernBert"}[name]
    size = dict(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=LENGTH + 2,  # RoBERTa counts positions from pad + 1
        pad_token_id=0,
    )
    if kind == "ModernBert":  # rotary positions, pre-LN, gated GELU; no dropout by default
        config = transformers.ModernBertConfig(
            **size, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3
        )
    else:
        config = getattr(transformers, f"{kind}Config")(
            **size, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
        )
    masked_lm = transformers.AutoModelForMaskedLM
    return Logits(
        untrained(masked_lm, config) if "zero-token-type" in parts else masked_lm.from_config(config)
    )


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mlm_plateau", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        choices=("hf-bert", "hf-roberta-preln", "hf-modernbert", "torch-post", "torch-pre"),
        required=True,
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="", help=f"torch-* only: comma-separated, of {', '.join(PARTS)}")
    args = p.parse_args()
    parts = set(filter(None, args.parts.split(",")))
    torch_parts = parts - {"zero-token-type"}
    if (
        torch_parts - set(PARTS)
        or (torch_parts and not args.model.startswith("torch-"))
        or (parts != torch_parts and args.model not in ("hf-bert", "hf-roberta-preln"))
    ):
        p.error(
            f"--parts takes {', '.join(PARTS)} with a torch-* model, "
            "or zero-token-type with hf-bert or hf-roberta-preln"
        )
    torch.manual_seed(args.seed)
    model = build(args.model, parts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    reached = None
    for step in range(1, args.steps + 1):
        ids = torch.randint(5, VOCAB, (BATCH, LENGTH // 2)).repeat_interleave(2, dim=1)
        masked = torch.rand(BATCH, LENGTH) < 0.15
        logits = model(ids.masked_fill(masked, MASK))[masked]
        loss = F.cross_entropy(logits, ids[masked])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(-1) == ids[masked]).float().mean().item()
        if reached is None and accuracy >= 0.5:
            reached = step
        if step % 25 == 0:
            print(f"{args.model} step {step}: loss {loss.item():.3f}, masked-token accuracy {accuracy:.3f}")
    label = args.model + "".join(f" +{part}" for part in sorted(parts))
    print(f"{label}: first step at 50 % accuracy: {reached or f'not within {args.steps}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

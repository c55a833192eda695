"""Text models: the shared contract (ids and mask in, logits out), padding invariance, attention
weights for the explainers, a tiny learning check, and BERT's loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bigmodel.config import ModelConfig
from bigmodel.data.bundle import DataInfo
from bigmodel.data.loader import TensorSplit
from bigmodel.errors import UserError
from bigmodel.models import build_model, list_models

INFO = DataInfo(
    kind="text",
    classes=["neg", "pos", "mid"],
    input_shape=[32],
    source="test",
    vocab_size=100,
    pad_token_id=0,
)
TINY_BERT = {"hidden_size": 16, "layers": 2, "heads": 2, "intermediate_size": 32}

# (name, small settings): every text model, both poolings and both position kinds of the transformer.
CASES = [
    ("bow", {"embed_dim": 8, "buckets": 64}),
    ("bow", {"embed_dim": 8, "ngrams": 3, "buckets": 64}),
    ("nbsvm", {"buckets": 64}),
    ("nbsvm", {"ngrams": 3, "buckets": 64}),
    ("rnn", {"embed_dim": 8, "hidden": 8, "pooling": "last"}),
    ("lstm", {"embed_dim": 8, "hidden": 8, "layers": 2, "pooling": "last"}),
    ("lstm", {"embed_dim": 8, "hidden": 8, "bidirectional": False, "pooling": "mean"}),
    ("gru", {"embed_dim": 8, "hidden": 8, "layers": 2, "pooling": "max"}),
    ("attention", {"dim": 16}),
    ("attention", {"dim": 16, "heads": 2}),
    ("transformer", {"dim": 16, "heads": 2, "positions": "sinusoidal", "pooling": "mean"}),
    ("transformer", {"dim": 16, "heads": 2, "positions": "learned", "pooling": "cls"}),
    ("transformer", {"dim": 16, "heads": 2, "positions": "sinusoidal", "pooling": "cls"}),
    ("transformer", {"dim": 16, "heads": 2, "positions": "learned", "pooling": "mean"}),
    ("bert", TINY_BERT),
    ("bert", {**TINY_BERT, "encoder": "modernbert"}),
    ("bert", {**TINY_BERT, "pooling": "mean"}),
    ("bert", {**TINY_BERT, "encoder": "modernbert", "pooling": "mean"}),
]
IDS = [f"{name}-{'-'.join(str(v) for v in settings.values())}" for name, settings in CASES]
ATTENTION_CASES = [c for c in CASES if c[0] in {"attention", "transformer", "bert"}]


def build(name: str, settings: dict, info: DataInfo = INFO) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, **settings), info)


def batch(lengths: list[int], width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids (never the pad id) for sequences of the given lengths, padded at the end to width."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, INFO.vocab_size, (len(lengths), width), generator=g)
    mask = (torch.arange(width) < torch.tensor(lengths).unsqueeze(1)).long()
    return ids * mask, mask


def test_every_text_model_is_registered():
    assert {"bow", "nbsvm", "rnn", "lstm", "gru", "attention", "transformer", "bert"} <= set(list_models())


def test_nbsvm_scales_each_feature_by_its_naive_bayes_ratio_and_counts_it_once():
    info = DataInfo(kind="text", classes=["neg", "pos"], input_shape=[6], source="test", vocab_size=10)
    model = build("nbsvm", {"buckets": 32}, info)
    # token 3 only in positive texts, 4 only in negative ones, 5 in both
    ids = torch.tensor([[3, 5, 3, 0], [3, 5, 1, 0], [4, 5, 2, 0], [4, 4, 0, 0]])
    mask = (ids > 0).long()
    model.fit_data(TensorSplit({"input_ids": ids, "attention_mask": mask}, torch.tensor([1, 1, 0, 0])))
    r = model.token_ratios
    assert r[3, 1] > 0 > r[4, 1] and r[3, 1] == -r[3, 0]  # two classes: one ratio, mirrored
    assert r[4, 1] < r[5, 1] < r[3, 1]  # in every text: weaker evidence than either
    with torch.no_grad():
        model.embeddings.weight.fill_(1.0)
    once, twice = (
        model(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long))
        for x in ([3, 5], [3, 5, 3, 3])
    )
    assert torch.allclose(once.logits, twice.logits)  # presence, not counts


@pytest.mark.parametrize(("name", "settings"), CASES, ids=IDS)
def test_text_models_map_ids_to_logits_and_train_every_weight(name: str, settings: dict):
    model = build(name, settings)
    assert isinstance(model.embeddings, nn.Embedding)
    ids, mask = batch([12, 3, 7, 1], width=12)
    logits = model(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == (4, 3)
    logits.sum().backward()
    # Every weight tensor gets a gradient, and a non-zero one (single rows may get none: the pad row,
    # BERT's second token type, unseen hash buckets).
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    unused = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not unused, unused


@pytest.mark.parametrize(("name", "settings"), CASES, ids=IDS)
def test_padding_does_not_change_the_logits(name: str, settings: dict):
    model = build(name, settings).eval()
    ids, mask = batch([12, 5, 9, 1], width=12)
    wide_ids = torch.zeros(4, 32, dtype=torch.long)
    wide_ids[:, :12] = ids
    wide_mask = torch.zeros(4, 32, dtype=torch.long)
    wide_mask[:, :12] = mask
    with torch.no_grad():
        short = model(input_ids=ids, attention_mask=mask).logits
        wide = model(input_ids=wide_ids, attention_mask=wide_mask).logits
        # A batch's other members do not matter either: the third example alone.
        alone = model(input_ids=ids[2:3, :9], attention_mask=mask[2:3, :9]).logits
    torch.testing.assert_close(short, wide, atol=1e-5, rtol=0)
    torch.testing.assert_close(short[2:3], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "settings"), ATTENTION_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(ATTENTION_CASES)]
)
def test_attention_weights_for_explainers(name: str, settings: dict):
    model = build(name, settings).eval()
    ids, mask = batch([10, 4, 7], width=10)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        out = model(input_ids=ids, attention_mask=mask, return_attentions=True)
        logits, attentions = out.logits, out.attentions
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=0)  # the explicit path computes the same
    expected_layers = {"attention": 1, "transformer": 2, "bert": 2}[name]
    assert len(attentions) == expected_layers
    prefix = getattr(model, "prefix_tokens", 0)  # the transformer's CLS vector comes first
    heads = settings.get("heads", 1)
    key_mask = torch.cat([torch.ones(3, prefix, dtype=torch.long), mask], 1).bool()
    for a in attentions:
        assert a.shape == (3, heads, 10 + prefix, 10 + prefix)
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
        assert (a.masked_select(~key_mask[:, None, None, :]) == 0).all()  # no weight on padded keys
    if name == "bert":  # the call switched the encoder to eager attention for itself only
        assert model.bert.config._attn_implementation == "sdpa"


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label 1 if token 7 occurs in the sequence, 0 otherwise, half and half; random lengths 4..16."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 17, (n,), generator=g)
    mask = (torch.arange(16) < lengths.unsqueeze(1)).long()
    ids = torch.randint(8, 50, (n, 16), generator=g)
    labels = torch.arange(n) % 2
    where = (torch.rand(n, generator=g) * lengths).long()
    ids[labels == 1, where[labels == 1]] = 7
    return ids * mask, mask, labels


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("transformer", {"dim": 16, "layers": 1, "heads": 2, "ff_mult": 2, "dropout": 0.0}),
        ("lstm", {"embed_dim": 16, "hidden": 16, "dropout": 0.0}),
    ],
)
def test_tiny_models_learn_whether_a_token_occurs(name: str, settings: dict):
    info = DataInfo(kind="text", classes=["no", "yes"], input_shape=[16], source="test", vocab_size=50)
    model = build(name, settings, info)
    ids, mask, labels = synthetic(256, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(200):
        pick = torch.randint(0, 256, (64,))
        loss = nn.functional.cross_entropy(
            model(input_ids=ids[pick], attention_mask=mask[pick]).logits, labels[pick]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (
            (model(input_ids=ids, attention_mask=mask).logits.argmax(1) == labels).float().mean().item()
        )
    assert accuracy >= 0.9


def test_berts_built_from_scratch_start_with_no_token_type_offset():
    # The token-type embedding of a one-segment text is one vector added to every position; at random
    # it kept a masked LM on the plateau of the commonest words (benchmarks/mlm_plateau.py).
    mlm_info = DataInfo(**{**INFO.to_dict(), "kind": "mlm", "classes": []})
    for encoder in (build("bert", TINY_BERT).bert, build("bert-mlm", TINY_BERT, mlm_info).hf.bert):
        embeddings = encoder.embeddings
        assert torch.count_nonzero(embeddings.token_type_embeddings.weight) == 0
        assert embeddings.word_embeddings.weight.std() > 0.01  # the rest is initialised as BERT's


def test_bert_loads_a_saved_encoder(tmp_path: Path):
    from transformers import BertConfig, BertModel

    saved = BertModel(
        BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
    )
    saved.save_pretrained(tmp_path / "tiny")
    model = build("bert", {"pretrained": str(tmp_path / "tiny")})
    loaded = model.bert.state_dict()
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert model.bert.config._attn_implementation == "sdpa"
    assert model.head.in_features == 32
    ids, mask = batch([5, 9], width=9)
    assert model(input_ids=ids, attention_mask=mask).logits.shape == (2, 3)


def test_bert_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import huggingface_hub.constants
    from transformers import BertConfig, BertModel

    # Offline, so the hub id fails at once rather than after retries; huggingface_hub read the variable
    # when it was imported, so its constant is patched too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        UserError, match="cannot load pretrained model bert-base-uncased: not a local directory"
    ):
        build("bert", {"pretrained": "bert-base-uncased"})

    BertModel(
        BertConfig(
            vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match=r"vocabulary of 120 tokens .* has 100; set data.tokenizer="):
        build("bert", {"pretrained": str(tmp_path / "other")})

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot load pretrained model") as err:
        build("bert", {"pretrained": str(tmp_path / "empty")})
    assert "\n" not in str(err.value)

    with pytest.raises(UserError, match="hidden_size=30 must be a multiple of model.heads=4"):
        build("bert", {"hidden_size": 30, "heads": 4})
    with pytest.raises(UserError, match="model.encoder='roberta' is not one of bert, modernbert"):
        build("bert", {"encoder": "roberta"})
    with pytest.raises(UserError, match="model.pooling='max' is not one of cls, mean"):
        build("bert", {"pooling": "max"})


def test_setting_errors():
    with pytest.raises(UserError, match="model.dim=30 must be a multiple of model.heads=4"):
        build("transformer", {"dim": 30, "heads": 4})
    with pytest.raises(UserError, match="model.pooling='first'"):
        build("lstm", {"pooling": "first"})
    with pytest.raises(UserError, match="model.positions='rotary'"):
        build("transformer", {"positions": "rotary"})
    image = DataInfo(kind="image", classes=["a", "b"], input_shape=[1, 8, 8], source="test")
    with pytest.raises(UserError, match="classifies text"):
        build("gru", {}, image)


@pytest.mark.parametrize(
    ("name", "settings"),
    [("attention", {"dim": 16}), ("transformer", {"dim": 16, "heads": 2}), ("bert", TINY_BERT)],
)
def test_attention_dropout_is_its_own_setting_and_off_by_default(name: str, settings: dict):
    """Only attention dropout is random in training mode once the other dropouts are 0: off (the
    default, the fast fused kernel on CPU) the outputs repeat, on they do not."""
    ids = torch.randint(1, 100, (4, 32))
    mask = torch.ones_like(ids)

    def twice(extra: dict) -> tuple[torch.Tensor, torch.Tensor]:
        model = build_model(ModelConfig(name=name, **settings, dropout=0.0, **extra), INFO).train()
        if name == "bert":  # its encoder's hidden dropout (0.1) is no classifier setting: silence it,
            for module in model.modules():  # keeping the attention dropout under test (0.5)
                if isinstance(module, nn.Dropout) and module.p != 0.5:
                    module.p = 0.0
        return model(ids, mask).logits, model(ids, mask).logits

    first, second = twice({})
    assert torch.equal(first, second)
    first, second = twice({"attention_dropout": 0.5})
    assert not torch.equal(first, second)

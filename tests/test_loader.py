import torch

from bigmodel.data.loader import BatchLoader, TensorSplit


def identity(features, gen):
    return dict(features)


def split(n: int) -> TensorSplit:
    return TensorSplit({"x": torch.arange(n).float()[:, None]}, torch.arange(n))


def labels_of(loader: BatchLoader) -> list[int]:
    return [int(v) for batch in loader for v in batch["labels"]]


def test_each_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    loader = BatchLoader(split(100), 16, identity, shuffle=True, seed=7)
    first = labels_of(loader)
    assert sorted(first) == list(range(100))
    assert labels_of(loader) == first  # same epoch, same order
    loader.set_epoch(1)
    second = labels_of(loader)
    assert second != first and sorted(second) == list(range(100))
    other = BatchLoader(split(100), 16, identity, shuffle=True, seed=8)
    assert labels_of(other) != first


def test_features_stay_with_their_labels_and_eval_order_is_fixed():
    loader = BatchLoader(split(50), 8, identity, shuffle=True, seed=1)
    for batch in loader:
        assert torch.equal(batch["x"][:, 0].long(), batch["labels"])
    assert labels_of(BatchLoader(split(50), 8, identity)) == list(range(50))


def test_drop_last():
    loader = BatchLoader(split(50), 16, identity, shuffle=True, drop_last=True)
    assert len(loader) == 3 and loader.num_examples == 48
    assert len(labels_of(loader)) == 48
    assert len(BatchLoader(split(50), 16, identity)) == 4


def test_length_buckets_group_similar_lengths_and_still_cover_every_example():
    n = 1000
    lengths = torch.randint(1, 500, (n,), generator=torch.Generator().manual_seed(0))
    plain = BatchLoader(split(n), 32, identity, shuffle=True, seed=3)
    bucketed = BatchLoader(split(n), 32, identity, shuffle=True, seed=3, lengths=lengths)

    def padding(loader: BatchLoader) -> int:
        # what per-batch padding to the longest costs
        return sum(
            int(lengths[b["labels"]].max() * len(b["labels"]) - lengths[b["labels"]].sum()) for b in loader
        )

    assert sorted(labels_of(bucketed)) == list(range(n))
    assert padding(bucketed) < padding(plain) / 5
    bucketed.set_epoch(1)
    first_batches = [tuple(b["labels"].tolist()) for b in bucketed]
    bucketed.set_epoch(2)
    assert first_batches != [tuple(b["labels"].tolist()) for b in bucketed]

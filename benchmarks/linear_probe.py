"""What masked-LM pretraining taught an encoder, without fine-tuning noise: a linear probe per layer.

    python -m benchmarks.linear_probe runs/mlm-imdb/hf [--data imdb] [--max-length 128] [--train 4000]
        [--threads N]

The pretrained encoder and the same architecture at random initialisation (bigmodel's ``untrained``),
both frozen, turn the texts (IMDB reviews by default) of bigmodel's training, validation and test
splits into the mean-pooled hidden states of every layer (0: the embeddings); a logistic regression
(scikit-learn, C chosen on the validation split) learns the sentiment from each. The gap between the
two arms' test accuracies is what pretraining put into the features.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from bigmodel.config import DataConfig
from bigmodel.data.loader import TensorSplit
from bigmodel.data.text import build_text_data
from bigmodel.models.bert import load_pretrained, untrained


@torch.inference_mode()
def pooled_layers(
    encoder: Any, split: TensorSplit, count: int, batch: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(count, layers + 1, width) mean-pooled hidden states of ``count`` random texts, and their labels."""
    split = split.take(torch.randperm(len(split), generator=torch.Generator().manual_seed(0))[:count])
    ids, mask = split.features["input_ids"], split.features["attention_mask"]
    pooled = []
    for start in range(0, len(ids), batch):
        m = mask[start : start + batch]
        out = encoder(input_ids=ids[start : start + batch], attention_mask=m, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, 1)  # (B, layers + 1, L, width)
        w = m[:, None, :, None].to(hidden.dtype)
        pooled.append(((hidden * w).sum(2) / w.sum(2).clamp(min=1)).float())
    return torch.cat(pooled).numpy(), split.labels.numpy()


def probe(train: tuple, val: tuple, test: tuple) -> tuple[float, float]:
    """(val, test) accuracy of the logistic regression whose C does best on val."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (scaler.transform(x), y) for x, y in (train, val, test)
    )
    best = max(
        (LogisticRegression(C=c, max_iter=3000).fit(x_train, y_train) for c in (0.001, 0.01, 0.1, 1.0)),
        key=lambda clf: clf.score(x_val, y_val),
    )
    return best.score(x_val, y_val), best.score(x_test, y_test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pretrained", help="a directory saved by bigmodel pretrain (RUN/hf)")
    parser.add_argument("--data", default="imdb", help="a named text data set")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--train", type=int, default=4000, help="training reviews the probe learns from")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModel

    data = build_text_data(DataConfig(name=args.data, max_length=args.max_length, tokenizer=args.pretrained))
    pretrained = load_pretrained(args.pretrained)
    torch.manual_seed(0)
    arms = {"pretrained": pretrained, "random": untrained(AutoModel, pretrained.config)}
    for name, encoder in arms.items():
        start = time.perf_counter()
        encoder.eval()
        train = pooled_layers(encoder, data.train, args.train)
        val, test = (pooled_layers(encoder, s, len(s)) for s in (data.val, data.test))
        for layer in range(train[0].shape[1]):
            scores = probe(*((x[:, layer], y) for x, y in (train, val, test)))
            print(f"{name:>10} layer {layer}: val {100 * scores[0]:.2f} %  test {100 * scores[1]:.2f} %")
        print(f"{name:>10}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

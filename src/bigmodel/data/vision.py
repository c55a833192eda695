"""Image data sets: named ones (Fashion-MNIST, MNIST, digits) and the user's own files.

Every source becomes uint8 (N, C, H, W) arrays in memory; the model sees them normalised with the
training split's per-channel mean and std (computed here, saved with the run).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import bigmodel.data.images as images
import bigmodel.data.sources as sources
from bigmodel.config import AugmentConfig, DataConfig
from bigmodel.data.augment import ImageTransform
from bigmodel.data.bundle import (
    DataBundle,
    DataInfo,
    carve,
    carve_groups,
    conflicting,
    group_ids,
    sample,
    to_split,
    unseen_in_test,
)
from bigmodel.errors import UserError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_CLASSES = [str(i) for i in range(10)]
NAMED = ("fashion-mnist", "mnist", "digits")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]  # x_train, y_train, x_test, ...


def build_image_data(cfg: DataConfig) -> DataBundle:
    x_train, y_train, x_test, y_test, classes = _read_named(cfg.name) if cfg.name else _read_path(cfg)
    x_train, x_test = (_conform(x, cfg.image_size, cfg.channels) for x in (x_train, x_test))
    source = cfg.name or str(cfg.path)
    group = group_ids(
        hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in (*x_train, *x_test)
    )
    keep, val = carve_groups(group[: len(y_train)], cfg.val_fraction, cfg.split_seed)
    x_test, y_test = _distinct_test(source, group, np.concatenate([y_train, y_test]), x_test, y_test)
    keep = sample(keep, cfg.limit, cfg.split_seed, y_train)
    x_fit = x_train[keep]
    mean, std = _channel_stats(x_fit)
    info = DataInfo(
        kind="image",
        classes=classes,
        input_shape=list(x_train.shape[1:]),
        source=source,
        mean=mean,
        std=std,
    )
    return DataBundle(
        train=to_split(x_fit, y_train[keep], "pixels"),
        val=to_split(x_train[val], y_train[val], "pixels"),
        test=to_split(x_test, y_test, "pixels"),
        info=info,
        train_transform=image_transform(info, cfg.augment),
        eval_transform=image_transform(info),
    )


def _distinct_test(
    source: str, group: np.ndarray, labels: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The test images that are no training image (the same pixels), the repeats counted in one line:
    exact copies are cheap to find in images, and a copy in two splits is a test the model has seen."""
    unseen, *repeats = unseen_in_test(group, len(labels) - len(y_test))
    left_out = len(y_test) - len(unseen)
    if repeats != [0, 0] or left_out:
        print(
            f"warning: {source}: {repeats[0]:,} training and {repeats[1]:,} test images repeat an earlier "
            f"one of their split (the same pixels), {conflicting(labels, group):,} with conflicting "
            f"labels, all kept; {left_out:,} test images are training images, left out of the "
            "test split, so no image is in two",
            file=sys.stderr,
        )
    return x_test[unseen], y_test[unseen]


def image_transform(info: DataInfo, augment: AugmentConfig | None = None) -> ImageTransform:
    return ImageTransform(info.mean, info.std, augment)


def prepare_images(paths: list[str], info: DataInfo) -> torch.Tensor:
    """Read the user's image files the way the run's training images were shaped: uint8 (N, C, H, W)."""
    channels, height, width = info.input_shape
    arrays = [images.read_image(p, height, width, channels) for p in paths]
    return torch.from_numpy(np.stack(arrays))


def _read_named(name: str) -> Arrays:
    if name == "digits":
        x, y = images.load_digits()
        # digits ships no test split: carve a fixed 20 % so the test split is never trained on.
        keep, test = carve(len(y), 0.2, seed=1234)
        return x[keep], y[keep], x[test], y[test], DIGIT_CLASSES
    if name not in sources.NAMED_IDX:
        raise UserError(
            f"unknown data set data.name={name!r}; choose one of {', '.join(NAMED)} or set data.path"
        )
    files = sources.locate(name)
    x_train, y_train = images.load_idx_split(files["train_images"], files["train_labels"])
    x_test, y_test = images.load_idx_split(files["test_images"], files["test_labels"])
    classes = FASHION_CLASSES if name == "fashion-mnist" else DIGIT_CLASSES
    return x_train, y_train, x_test, y_test, classes


def _read_path(cfg: DataConfig) -> Arrays:
    path = Path(str(cfg.path))
    if not path.exists():
        raise UserError(f"data.path {path} does not exist; give an image folder or an .npz file")
    if path.is_file():
        if path.suffix != ".npz":
            raise UserError(f"data.path {path} is a file but not .npz; give an .npz file or an image folder")
        arrays = images.load_npz(path)
        classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else None
        classes = classes or [str(i) for i in range(int(arrays["y_train"].max()) + 1)]
        return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], classes
    idx = _idx_files(path)
    if idx is not None:
        x_train, y_train = images.load_idx_split(idx["train-images"], idx["train-labels"])
        x_test, y_test = images.load_idx_split(idx["t10k-images"], idx["t10k-labels"])
        return x_train, y_train, x_test, y_test, [str(i) for i in range(int(y_train.max()) + 1)]
    if (path / "train").is_dir() and (path / "test").is_dir():
        x_train, y_train, classes = images.load_image_folder(path / "train", cfg.image_size, cfg.channels)
        x_test, y_test, _ = images.load_image_folder(path / "test", cfg.image_size, cfg.channels, classes)
        return x_train, y_train, x_test, y_test, classes
    # One folder of class sub-folders: carve a fixed test split as well as the validation split.
    x, y, classes = images.load_image_folder(path, cfg.image_size, cfg.channels)
    keep, test = carve(len(y), 0.1, seed=1234)
    return x[keep], y[keep], x[test], y[test], classes


def _idx_files(path: Path) -> dict[str, Path] | None:
    """The four MNIST-style IDX files in a folder (KMNIST, MNIST, ...), or None if absent."""
    found: dict[str, Path] = {}
    for stem in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        hits = sorted(path.glob(f"{stem}*ubyte*"))
        if not hits:
            return None
        found[stem] = hits[0]
    return found


def _conform(x: np.ndarray, size: int | None, channels: int | None) -> np.ndarray:
    """Bring arrays to the configured size and channel count (folders are already read that way)."""
    if channels is not None and x.shape[1] != channels:
        x = (
            np.repeat(x, 3, axis=1)
            if channels == 3
            else x.mean(axis=1, keepdims=True).round().astype(np.uint8)
        )
    if size is not None and x.shape[-2:] != (size, size):
        t = F.interpolate(torch.from_numpy(x).float(), size=(size, size), mode="bilinear", antialias=True)
        x = t.round().clamp(0, 255).to(torch.uint8).numpy()
    return x


def _channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    t = torch.from_numpy(x).float().div_(255.0)
    mean = t.mean(dim=(0, 2, 3))
    std = t.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.tolist(), std.tolist()

"""Data: every source becomes a ``DataBundle`` of in-memory splits plus a ``DataInfo``."""

from __future__ import annotations

from bigmodel.config import DataConfig
from bigmodel.data.bundle import DataBundle, DataInfo
from bigmodel.data.loader import BatchLoader, TensorSplit

__all__ = ["BatchLoader", "DataBundle", "DataInfo", "TensorSplit", "build_data"]


TEXT_NAMES = ("imdb", "imdb-25k", "rotten-tomatoes")
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl")


def is_text(cfg: DataConfig) -> bool:
    if cfg.path is not None:
        return cfg.path.lower().endswith(TEXT_SUFFIXES)
    return all(name in TEXT_NAMES for name in (cfg.name or "").split("+"))


def build_data(cfg: DataConfig) -> DataBundle:
    """Read, split and describe the configured data; every kind ends as a ``DataBundle``."""
    if cfg.objective != "classify":
        from bigmodel.data.lm import build_lm_data

        return build_lm_data(cfg)
    if is_text(cfg):
        from bigmodel.data.text import build_text_data

        return build_text_data(cfg)
    from bigmodel.data.vision import build_image_data

    return build_image_data(cfg)

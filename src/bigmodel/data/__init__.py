"""Data: every source becomes a ``DataBundle`` of in-memory splits plus a ``DataInfo``."""

from __future__ import annotations

from bigmodel.config import DataConfig
from bigmodel.data.bundle import DataBundle, DataInfo
from bigmodel.data.loader import BatchLoader, TensorSplit
from bigmodel.recipes import is_text_data

__all__ = ["BatchLoader", "DataBundle", "DataInfo", "TensorSplit", "build_data"]


def is_text(cfg: DataConfig) -> bool:
    return is_text_data({"path": cfg.path, "name": cfg.name})


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

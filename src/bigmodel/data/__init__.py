"""Data: every source becomes a ``DataBundle`` of in-memory splits plus a ``DataInfo``."""

from __future__ import annotations

from bigmodel.config import DataConfig
from bigmodel.data.bundle import DataBundle, DataInfo
from bigmodel.data.loader import BatchLoader, TensorSplit

__all__ = ["BatchLoader", "DataBundle", "DataInfo", "TensorSplit", "build_data"]


def build_data(cfg: DataConfig) -> DataBundle:
    from bigmodel.data.vision import build_image_data

    return build_image_data(cfg)

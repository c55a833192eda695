"""The registry's table: each family module registers its builders here when imported."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch.nn as nn
from pydantic import validate_call

Builder = Callable[..., nn.Module]
REGISTRY: dict[str, Builder] = {}
KIND: dict[str, str] = {}  # model name → the kind of data it learns from (DataInfo.kind)


def register_model(name: str, kind: str) -> Callable[[Builder], Builder]:
    def add(fn: Builder) -> Builder:
        REGISTRY[name] = validate_call(fn, config={"arbitrary_types_allowed": True})
        REGISTRY[name].__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        KIND[name] = kind
        return fn

    return add

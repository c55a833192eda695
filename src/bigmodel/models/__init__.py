"""The model registry: ``model.name`` in a config is a key here, and the other ``model.*`` keys are
the keyword arguments of that builder, checked against its signature before anything is built. A name
with a ':' (``path/to/file.py:Name``, ``package.module:Name``) is a model of the user's own instead,
built the same way by ``bigmodel.models.custom``.

Every builder takes the ``DataInfo`` first, so a model is sized from the data (channels, image size,
number of classes) rather than from numbers the user has to repeat. Every model's ``forward`` takes
the batch's features by name and returns logits.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import torch.nn as nn
from pydantic import ValidationError

from bigmodel.config import ModelConfig, is_user_model
from bigmodel.data.bundle import DataInfo
from bigmodel.errors import UserError
from bigmodel.models.registry import KIND, REGISTRY, Builder

_TASK = {
    "image": "classifies images",
    "text": "classifies text",
    "mlm": "is pretrained with data.objective=mlm",
    "clm": "is pretrained with data.objective=clm",
}
_DATA = {"image": "images", "text": "text to classify", "mlm": "masked-LM text", "clm": "causal-LM text"}


def list_models() -> list[str]:
    _load_families()
    return sorted(REGISTRY)


def model_settings(name: str) -> dict[str, Any]:
    """The settings a model accepts, with their defaults."""
    if is_user_model(name):
        from bigmodel.models.custom import user_model_settings

        return user_model_settings(name)
    params = list(inspect.signature(_builder(name)).parameters.values())[1:]
    return {p.name: p.default for p in params}


def build_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    if is_user_model(cfg.name):
        from bigmodel.models.custom import build_user_model

        return build_user_model(cfg, info)
    builder = _builder(cfg.name)
    if KIND[cfg.name] != info.kind:
        fitting = ", ".join(n for n in sorted(REGISTRY) if KIND[n] == info.kind)
        raise UserError(
            f"model {cfg.name!r} {_TASK[KIND[cfg.name]]}, but the data is {_DATA[info.kind]}; "
            f"choose one of {fitting}"
        )
    allowed = model_settings(cfg.name)
    for key in cfg.settings():
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            listed = ", ".join(allowed) or "none"
            raise UserError(
                f"model.{key} is not a setting of model {cfg.name!r}{hint}; its settings: {listed}"
            )
    try:
        return builder(info, **cfg.settings())
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        raise UserError(f"model.{key}={err.get('input')!r}: {err['msg']}") from None


def _builder(name: str) -> Builder:
    _load_families()
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"unknown model.name={name!r}{hint}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def _load_families() -> None:
    # Importing a family module registers its builders.
    from bigmodel.models import bert, lm, sequence, vision  # noqa: F401

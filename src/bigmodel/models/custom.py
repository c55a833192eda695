"""Models the user wrote: ``model.name=path/to/file.py:Name`` or ``model.name=package.module:Name``.

``Name`` is an ``nn.Module`` subclass or a function that returns one. The other ``model.*`` keys are
its keyword arguments, checked against its signature before anything is built, as the registry's are; a
parameter named ``info`` (or annotated ``DataInfo``) receives the data's ``DataInfo``, so the model can
size itself from the data rather than from numbers the user repeats.

The built module is wrapped in ``UserModel``, which speaks the loop's ``model(**features)``: an image's
``pixels`` go in positionally, so a plain ``def forward(self, x)`` works unchanged; text's
``input_ids`` and ``attention_mask`` go in by name. It is then run once on a dummy batch of two examples,
so a model that does not fit the data fails here, in one line, rather than as a traceback mid-epoch.

Every mistake is a one-line ``UserError`` naming ``model.name``; the user's code itself is never hidden
behind it except where its failure is the mistake (importing, constructing with wrong settings, the
dummy batch), and then the message carries the line of the user's file where it happened.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn

from bigmodel.config import ModelConfig, is_model_file
from bigmodel.data.bundle import DataInfo
from bigmodel.errors import UserError, one_line
from bigmodel.models.output import Model

KINDS = ("image", "text")  # user models are classifiers: they return (batch, classes) logits
DUMMY_BATCH = 2


class UserModel(Model):
    """The user's module as the loop calls it: ``model(**features)`` returns what the module returns.

    One feature (an image's ``pixels``) is passed positionally, several (``input_ids``,
    ``attention_mask``) by name; arguments already positional (as Captum passes them) go through as
    they are. The user's module is ``self.net``, so its weights are saved as ``net.<its own names>``."""

    # A user's module declares nothing beyond its logits (Model's defaults): no attention maps, no Hugging
    # Face export; the task turns the logits it returns into a ModelOutput.

    def __init__(self, net: nn.Module, name: str = ""):
        super().__init__()
        self.net = net
        self.label = name  # model.name, for messages

    def forward(self, *inputs: Any, **features: Any) -> Any:
        inputs = tuple(_plain(x) for x in inputs)
        features = {key: _plain(x) for key, x in features.items()}
        if not inputs and len(features) == 1:
            return self.net(next(iter(features.values())))
        return self.net(*inputs, **features)

    @property
    def embeddings(self) -> nn.Module:
        """The token embeddings that ``bigmodel explain`` attributes a text to: the module's own
        ``embeddings``, else its one ``nn.Embedding``."""
        layers = self._embeddings()
        if len(layers) != 1:
            raise AttributeError(f"{type(self.net).__name__} has no single nn.Embedding to attribute to")
        return layers[0]

    def embedding_layers(self) -> list[nn.Module]:
        """``embeddings`` as a list, or a one-line error saying what explain needs."""
        layers = self._embeddings()
        if len(layers) != 1:
            raise UserError(
                f"model.name={self.label}: explaining a text needs its token embeddings, an `embeddings` "
                f"attribute or a single nn.Embedding; {type(self.net).__name__} has {len(layers) or 'none'}"
            )
        return layers

    def _embeddings(self) -> list[nn.Module]:
        own = getattr(self.net, "embeddings", None)
        if isinstance(own, nn.Module):
            return [own]
        return [m for m in self.net.modules() if type(m) is nn.Embedding]


def _plain(x: Any) -> Any:
    """A contiguous image batch with (N, C, H, W)'s own strides. With one channel a tensor can be both
    (N, C, H, W)- and channels-last-contiguous; the convolutions then answer channels-last, and a user's
    ``x.view(n, -1)`` after them fails. Re-striding it is a view: nothing is copied."""
    if isinstance(x, torch.Tensor) and x.dim() == 4 and x.is_contiguous():
        return x.view(-1).view(x.shape)
    return x


def user_model_settings(name: str) -> dict[str, Any]:
    """The settings a user model accepts, with their defaults (``inspect.Parameter.empty``: required)."""
    return {p.name: p.default for p in _setting_params(load_user_model(name))}


def build_user_model(cfg: ModelConfig, info: DataInfo) -> nn.Module:
    """The user's model for this data, wrapped in ``UserModel`` and checked on a dummy batch."""
    name = cfg.name
    if info.kind not in KINDS:
        raise UserError(
            f"model.name={name}: user models are classifiers (image or text data), but data.objective="
            f"{info.kind} pretrains a language model; use model.name=bert-mlm (mlm) or gpt (clm)"
        )
    target = load_user_model(name)
    params = _setting_params(target)
    settings = cfg.settings()
    _check_settings(name, settings, params, _takes_any_keyword(target))
    args: tuple[Any, ...] = ()
    kwargs = dict(settings)
    receiver = _info_param(target)
    if receiver is not None:
        if receiver.kind is inspect.Parameter.POSITIONAL_ONLY:
            args = (info,)
        else:
            kwargs[receiver.name] = info
    try:
        net = target(*args, **kwargs)
    except TypeError as exc:
        call = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        raise UserError(
            f"model.name={name}: {_short(target)}({call}) failed: {one_line(exc)}{_where(exc)}"
        ) from None
    if not isinstance(net, nn.Module):
        raise UserError(
            f"model.name={name}: {_short(target)}(...) returned {type(net).__name__}, not an nn.Module"
        )
    model = UserModel(net, name)
    check_output(model, info, name)
    return model


_GIVEN: dict[str, Any] = {}  # model.name → the class or builder handed to bigmodel.train or load


def give_user_model(target: Any, name: str | None = None) -> str:
    """Remember a class or builder handed over in Python (``bigmodel.train(model=...)``) and return the
    ``model.name`` that finds it again: ``package.module:Name``, or ``path/to/file.py:Name`` for a
    script's or a user file's own. A notebook's has no file: it is ``__main__:Name``, found only in
    this process or when handed to ``bigmodel.load`` again. ``name`` (a run's recorded one) overrides."""
    if isinstance(target, nn.Module):
        raise UserError(
            f"model= takes the class or a function that builds it, not an instance of "
            f"{type(target).__name__}: the run rebuilds the model to load its checkpoints "
            "(set its arguments as model.<name>=value overrides)"
        )
    if not callable(target) or not hasattr(target, "__module__") or not hasattr(target, "__name__"):
        raise UserError(
            f"model= must be an nn.Module subclass or a function that returns one, got {target!r}"
        )
    if name is None:
        module = sys.modules.get(target.__module__)
        file = getattr(module, "__file__", None)
        scripted = target.__module__ == "__main__" or target.__module__.startswith("bigmodel_user_")
        where = file if scripted and file else target.__module__
        name = f"{where}:{target.__name__}"
    _GIVEN[name] = target
    return name


def load_user_model(name: str) -> Any:
    """The class or function that ``model.name`` names, imported from its file or module."""
    if name in _GIVEN:
        return _GIVEN[name]
    target, _, attr = name.rpartition(":")
    if target == "__main__":
        raise UserError(
            f"model.name={name} was defined in a notebook or an interactive session: load the run with "
            f"bigmodel.load(RUN, model={attr}), or move {attr} into a file and set model.name=file.py:{attr}"
        )
    module = _import_file(name, Path(target)) if is_model_file(target) else _import_module(name, target)
    if not hasattr(module, attr):
        where = Path(target).name if is_model_file(target) else target
        offered = _candidates(module)
        close = difflib.get_close_matches(attr, offered, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        defines = (
            f"it defines {', '.join(offered)}" if offered else "it defines no nn.Module class or function"
        )
        raise UserError(f"model.name={name}: {where} has no {attr}{hint}; {defines}")
    obj = getattr(module, attr)
    if isinstance(obj, nn.Module):
        raise UserError(
            f"model.name={name}: {attr} is an nn.Module instance; name its class, or a function that "
            "builds it"
        )
    if isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise UserError(f"model.name={name}: {attr} is a class but not an nn.Module subclass")
    if not callable(obj):
        raise UserError(
            f"model.name={name}: {attr} is not an nn.Module subclass or a function that returns one "
            f"(it is of type {type(obj).__name__})"
        )
    return obj


def dummy_batch(info: DataInfo, size: int = DUMMY_BATCH) -> dict[str, torch.Tensor]:
    """A batch shaped and typed as the loop's: zero images, or texts of ones with their attention mask
    (int64 both, as ``TextTransform`` hands them over)."""
    if info.kind == "text":
        length = min(8, info.input_shape[0])
        ids = torch.ones(size, length, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return {"pixels": torch.zeros(size, *info.input_shape)}


def check_output(model: nn.Module, info: DataInfo, name: str) -> None:
    """Run ``model`` once on a dummy batch (no gradients, eval mode, its mode restored) and refuse
    anything but float logits of shape (batch, classes): the loop's loss needs exactly that."""
    batch = dummy_batch(info)
    classes = info.num_classes
    shape = "x".join(str(n) for n in info.input_shape)
    what = f"a batch of {DUMMY_BATCH} {'images' if info.kind == 'image' else 'texts'} ({shape})"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(**batch)
    except Exception as exc:  # the model does not fit the data: the user's code, so say where
        called = "forward(x)" if info.kind == "image" else "forward(input_ids, attention_mask)"
        raise UserError(
            f"model.name={name} failed on {what}, called as {called}: {one_line(exc)}{_where(exc)}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise UserError(
            f"model.name={name} returned {type(out).__name__}; a classifier of {classes} classes must "
            f"return one tensor of logits (batch, {classes})"
        )
    if tuple(out.shape) != (DUMMY_BATCH, classes):
        raise UserError(
            f"model.name={name} returned logits of shape {tuple(out.shape)} for {what}; a classifier of "
            f"{classes} classes must return (batch, {classes})"
        )
    if not out.is_floating_point():
        raise UserError(f"model.name={name} returned {out.dtype} logits; return floating-point logits")


# --- importing ------------------------------------------------------------------------------------


def _import_file(name: str, path: Path) -> ModuleType:
    """The file as a module, under a name derived from its path, executed once per version of the file:
    loading it again (the loop builds the model, then reloads the best checkpoint) returns the same
    classes, and an edited file is read afresh."""
    if not path.is_file():
        raise UserError(f"model.name={name}: no file {path}")
    stamp = (path.stat().st_mtime_ns, path.stat().st_size)
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = "bigmodel_user_" + re.sub(r"\W", "_", path.stem) + "_" + digest
    cached = sys.modules.get(module_name)
    if cached is not None and getattr(cached, "__bigmodel_stamp__", None) == stamp:
        return cached
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"model.name={name}: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before executing: dataclasses and pickling look it up there
    try:
        with _on_path(str(path.parent)):  # its sibling files import as they do under `python file.py`
            spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        why = f"{one_line(exc)}{_where(exc)}"
        raise UserError(f"model.name={name}: importing {path} failed: {why}") from None
    module.__bigmodel_stamp__ = stamp  # type: ignore[attr-defined]
    return module


def _import_module(name: str, dotted: str) -> ModuleType:
    try:
        with _on_path(os.getcwd()):
            return importlib.import_module(dotted)
    except Exception as exc:
        why = f"{one_line(exc)}{_where(exc)}"
        if isinstance(exc, ModuleNotFoundError) and exc.name and dotted.startswith(exc.name):
            # Most often run from another folder than the package's: say where it is looked for.
            why += f" (looked for in {os.getcwd()} and sys.path; or name its file: path/to/file.py:Name)"
        raise UserError(f"model.name={name}: importing {dotted} failed: {why}") from None


@contextmanager
def _on_path(folder: str) -> Iterator[None]:
    if folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:
            sys.path.remove(folder)


def _candidates(module: ModuleType) -> list[str]:
    """What the module itself defines that could be a model: nn.Module subclasses and functions."""
    found = []
    for key, value in vars(module).items():
        if key.startswith("_") or getattr(value, "__module__", None) != module.__name__:
            continue
        if (isinstance(value, type) and issubclass(value, nn.Module)) or inspect.isfunction(value):
            found.append(key)
    return found


# --- signatures -----------------------------------------------------------------------------------


def _signature(target: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # some builtins have none: accept any settings
        return None


def _info_param(target: Callable[..., Any]) -> inspect.Parameter | None:
    """The parameter that receives the DataInfo: one named ``info`` or annotated ``DataInfo``."""
    sig = _signature(target)
    for p in sig.parameters.values() if sig else ():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = p.annotation
        if isinstance(annotation, str):  # `from __future__ import annotations`
            named_info = annotation.rpartition(".")[2] == "DataInfo"
        else:
            named_info = annotation is DataInfo
        if p.name == "info" or named_info:
            return p
    return None


def _setting_params(target: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters a ``model.*`` key can set: every named one but the DataInfo's."""
    sig = _signature(target)
    receiver = _info_param(target)
    return [
        p
        for p in (sig.parameters.values() if sig else ())
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and (receiver is None or p.name != receiver.name)
    ]


def _takes_any_keyword(target: Callable[..., Any]) -> bool:
    sig = _signature(target)
    return sig is None or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _check_settings(
    name: str, settings: dict[str, Any], params: list[inspect.Parameter], any_keyword: bool
) -> None:
    allowed = [p.name for p in params]
    listed = ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name for p in params)
    listed = listed or "none"
    if not any_keyword:
        for key in settings:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(
                    f"model.{key} is not a setting of model.name={name}{hint}; its settings: {listed}"
                )
    missing = [p.name for p in params if p.default is p.empty and p.name not in settings]
    if missing:
        needed = " ".join(f"model.{key}=..." for key in missing)
        raise UserError(f"model.name={name} needs {needed} (no default); its settings: {listed}")


# --- messages -------------------------------------------------------------------------------------


def _short(target: Any) -> str:
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)


def _where(exc: BaseException) -> str:
    """`` (file.py, line N)``: the innermost frame of the user's code, not torch's or bigmodel's."""
    if isinstance(exc, SyntaxError) and exc.filename:  # its message already names the file and line
        return ""
    package = str(Path(__file__).resolve().parents[1])
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith(package)
        and "site-packages" not in f.filename
        and not f.filename.startswith("<")
        and "importlib" not in f.filename
    ]
    if not frames:
        return ""
    return f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})"

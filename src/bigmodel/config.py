"""Typed configuration: YAML file + ``section.key=value`` overrides → a validated ``Config``.

Every section forbids unknown keys, so a typo fails loudly with the list of keys that exist.
The model section is open: its extra keys belong to the chosen model and are checked by the
model registry against that model's own settings.
"""

from __future__ import annotations

import builtins
import copy
import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bigmodel.errors import UserError
from bigmodel.recipes import follow_optimizer, recipe_for


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    crop_padding: int = Field(0, ge=0, description="random crop after zero padding by this many pixels")
    hflip: bool = Field(False, description="random horizontal flip")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="probability of erasing one rectangle")
    mixup: float = Field(0.0, ge=0.0, description="mixup's Beta(a, a): blend pairs of images and labels")
    cutmix: float = Field(0.0, ge=0.0, description="cutmix's Beta(a, a): paste a patch of another image")


class DataConfig(Section):
    name: str | None = Field("fashion-mnist", description="a named data set (see `bigmodel data list`)")
    path: str | None = Field(
        None, description="your own data: an image folder, an .npz file, or a CSV/TSV/JSONL file of texts"
    )
    limit: int | None = Field(
        None, gt=0, description="train on a seeded sample of N training examples, stratified by class"
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of train carved out for validation")
    split_seed: int = Field(0, description="seed of the train/validation split (fixed on purpose)")
    image_size: int | None = Field(None, gt=0, description="resize images to this square size")
    channels: int | None = Field(None, description="1 (grey) or 3 (RGB); default: what the data has")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # text
    text_column: str = Field("text", description="column (CSV/TSV) or field (JSONL) holding the text")
    label_column: str = Field("label", description="column or field holding the label")
    max_length: int = Field(256, gt=1, description="tokens per text; longer texts are truncated")
    tokenizer: str = Field(
        "wordpiece", description="wordpiece or bpe (trained on the training split), or a path / hub id"
    )
    vocab_size: int = Field(16000, gt=10, description="vocabulary of a trained tokenizer")
    lowercase: bool = Field(True, description="lowercase before a trained tokenizer")
    length_buckets: bool = Field(True, description="batch texts of similar length together when training")
    objective: Literal["classify", "mlm", "clm"] = Field(
        "classify", description="classify labels, or pretrain on the texts alone: masked or causal LM"
    )
    mask_prob: float = Field(0.15, gt=0.0, lt=1.0, description="mlm: share of tokens to predict")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.path is not None:
            # data.path wins: a user pointing at their own files never means the default data set.
            object.__setattr__(self, "name", None)
        if self.name is None and self.path is None:
            raise ValueError("set data.name (a named data set) or data.path (files of your own)")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"data.channels must be 1 or 3, got {self.channels}")
        return self


class ModelConfig(BaseModel):
    """``name`` picks the architecture: a registry key, or a model of the user's own as
    ``path/to/file.py:Name`` or ``package.module:Name``; any other key is a setting of that architecture."""

    model_config = ConfigDict(extra="allow")
    name: str = "cnn"

    @field_validator("name")
    @classmethod
    def _user_model(cls, name: str) -> str:
        # A relative file is made absolute now, so the saved config.yaml finds it from any directory later.
        if not is_user_model(name):
            return name
        target, _, attr = name.rpartition(":")
        form = "path/to/file.py:ClassOrBuilder or package.module:ClassOrBuilder"
        if not attr.isidentifier() or not target:
            raise ValueError(f"model.name={name!r} must look like {form}")
        if is_model_file(target):
            return f"{os.path.abspath(os.path.expanduser(target))}:{attr}"
        if not all(part.isidentifier() for part in target.split(".")):
            raise ValueError(f"model.name={name!r} must look like {form}")
        return name

    def settings(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def is_user_model(name: str) -> bool:
    """``file.py:Name`` and ``package.module:Name`` are the user's own models; registry names have no ':'."""
    return ":" in name


def is_model_file(target: str) -> bool:
    """Whether the part of a user model's name before ':' is a file (else a dotted module name)."""
    return target.endswith(".py") or "/" in target or os.sep in target


def model_label(name: str) -> str:
    """``model.name`` as a run name may show it: a user model by its class or function, lowercased
    (no slashes or colons in a directory name)."""
    return name.rpartition(":")[2].lower() if is_user_model(name) else name


class EarlyStoppingConfig(Section):
    patience: int | None = Field(None, gt=0, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0.0)


VALIDATION_METRICS = (
    "val/accuracy", "val/loss", "val/f1_macro", "val/precision_macro", "val/recall_macro",
    "val/f1_weighted", "val/roc_auc", "val/top5_accuracy",
)  # fmt: skip
VALIDATION_METRIC = Literal[VALIDATION_METRICS]  # type: ignore[valid-type]
MONITORABLE = Literal[(*VALIDATION_METRICS, "train/accuracy", "train/loss")]  # type: ignore[valid-type]


class TrainConfig(Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int | None = Field(
        None,
        gt=0,
        description="examples per evaluation batch; default: 1024, or for a language model as many as keep "
        "its (batch, length, vocabulary) logits within 512 MiB",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = 0
    deterministic: bool = False
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm to this")
    grad_accum: int = Field(1, gt=0, description="batches per optimizer step")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    ema: float | None = Field(
        None, gt=0.0, lt=1.0, description="decay of an exponential moving average of the weights, evaluated"
    )
    monitor: MONITORABLE | None = Field(
        None,
        description="metric for the best checkpoint and early stopping; default: the task's, val/accuracy "
        "for a classifier, val/loss for a language model",
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    channels_last: bool = True
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="under torchrun: ddp replicates the model, fsdp shards weights and optimizer state"
    )
    checkpoint_every: int = Field(
        0, ge=0, description="also checkpoint every N optimizer steps (0: at the end of each epoch only)"
    )
    keep_checkpoints: int = Field(2, gt=0, description="step checkpoints kept, newest first (best is extra)")
    compile: bool = Field(False, description="torch.compile the training forward pass (slow first steps)")
    threads: int | None = Field(None, gt=0, description="torch intra-op threads; default: all cores")
    keep_freed_memory: bool = Field(
        True,
        description="glibc: reuse freed memory instead of returning it to the OS, so a step does not fault "
        "its activations in again (memory stays at its peak until the process exits)",
    )
    progress: bool = True

    @property
    def monitor_mode(self) -> str:
        """Losses improve downwards, every other monitored metric upwards."""
        return "min" if (self.monitor or "").endswith("loss") else "max"


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    nesterov: bool = Field(False, description="sgd only")
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "step", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warm-up from lr/100, in epochs")
    step_epochs: int = Field(10, gt=0, description="step schedule: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step schedule: decay factor")
    min_lr: float = Field(0.0, ge=0.0, description="cosine schedule: final learning rate")


class SearchRange(Section):
    """One searched key's distribution: exactly one of ``choice``, ``uniform``, ``loguniform`` or ``int``
    (``[low, high]``, both included), with ``step`` for a stepped ``uniform`` or ``int``."""

    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None  # the distribution's name in the YAML
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_distribution(self) -> SearchRange:
        given = [name for name in DISTRIBUTIONS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [0.001, 0.1]}}"
            )
        if self.choice is not None and not self.choice:
            raise ValueError("choice needs at least one value")
        bounds = self.uniform or self.loguniform or self.int
        if bounds is not None and bounds[0] >= bounds[1]:
            raise ValueError(f"low {bounds[0]} must be below high {bounds[1]}")
        if self.loguniform is not None and self.loguniform[0] <= 0:
            raise ValueError(f"loguniform needs low above 0, got {self.loguniform[0]}")
        if self.step is not None and (self.choice is not None or self.loguniform is not None):
            raise ValueError("step belongs to uniform or int")
        return self

    @property
    def distribution(self) -> str:
        return next(name for name in DISTRIBUTIONS if getattr(self, name) is not None)

    def extremes(self) -> list[Any]:
        """The values whose validity stands for the whole range: every choice, or both ends."""
        return list(self.choice if self.choice is not None else getattr(self, self.distribution))


DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")


class TuneConfig(Section):
    """``bigmodel tune``: which config keys to search and how; read by ``bigmodel.tune``, ignored by train."""

    params: dict[str, SearchRange] = Field(
        default_factory=dict, description="config key -> {choice|uniform|loguniform|int: ...}"
    )
    metric: VALIDATION_METRIC | None = Field(None, description="what to optimise; default: train.monitor's")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: minimize a loss, maximize anything else"
    )
    trials: int = Field(20, gt=0, description="trials in the study, over all its workers")
    sampler: Literal["tpe", "grid", "random"] = "tpe"
    pruner: Literal["hyperband", "median", "none"] = Field(
        "hyperband", description="stop poor trials early, from their per-epoch validation metric"
    )
    seed: int = Field(0, description="the sampler's seed (a study shared by several workers is unseeded)")


class Config(Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    tune: TuneConfig | None = Field(None, description="bigmodel tune's search; see TuneConfig")
    name: str | None = Field(
        None, description="run name; default: the config file's stem, else <data>-<model>"
    )

    @model_validator(mode="after")
    def _user_models_get_plain_layout(self) -> Config:
        # A user's forward may `.view` a feature map, which channels-last tensors refuse (the seed's
        # CNN does): unless asked for, a user model gets (N, C, H, W)-contiguous tensors and weights.
        if is_user_model(self.model.name) and "channels_last" not in self.train.model_fields_set:
            object.__setattr__(self.train, "channels_last", False)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def with_recipe(raw: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    """``raw`` (a data name and a model) with the model's recipe for ``data`` (default: raw's own); a
    model without one (the user's own, a pretraining objective) gets the default ``cnn``'s, as before."""
    recipe = recipe_for(raw["model"]["name"], data if data is not None else raw["data"])
    recipe = recipe or recipe_for("cnn", {"name": "fashion-mnist"}) or {}
    return {
        "data": {**raw["data"], **recipe.get("data", {})},
        "model": {**raw["model"], **recipe.get("model", {})},
        "train": recipe.get("train", {}),
        "optim": recipe.get("optim", {}),
    }


DEFAULT_CONFIG: dict[str, Any] = with_recipe({"data": {"name": "fashion-mnist"}, "model": {"name": "cnn"}})


def load_config(
    source: str | Path | dict[str, Any] | Config | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    model: str | None = None,
) -> Config:
    """A YAML file, a mapping or a ``Config`` (default: the built-in config), with ``model`` (a
    ``model.name``) replacing its model section and then dotted overrides applied, validated."""
    if source is None:  # the recipe of the model and kind of data the overrides name
        asked = apply_overrides(copy.deepcopy(DEFAULT_CONFIG), overrides)
        raw: dict[str, Any] = with_recipe(
            {
                "data": {"name": DEFAULT_CONFIG["data"]["name"]},
                "model": {"name": model or asked["model"]["name"]},
            },
            asked["data"],
        )
    elif isinstance(source, Config):
        raw = source.model_dump(mode="json", exclude_unset=True)  # what was set, not derived defaults
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    else:
        raw = _read_yaml(Path(source))
        raw.setdefault("name", Path(source).stem)
    if model is not None:  # the config's model settings belong to its model, not this one
        raw["model"] = {"name": model}
    tuned_for = raw.get("optim", {}).get("name")  # where the recipe or the file names one
    raw = apply_overrides(raw, overrides)
    follow_optimizer(raw, tuned_for, {item.partition("=")[0] for item in overrides})
    cfg = validate_config(raw)
    if cfg.name is None:  # no config file: name the run after what it trains
        source_name = cfg.data.name or Path(str(cfg.data.path)).stem
        cfg.name = f"{source_name}-{model_label(cfg.model.name)}"
    return cfg


def validate_config(raw: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc, raw)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"config file {path} does not exist; pass a YAML file such as configs/fashion-cnn.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"config file {path} is not valid YAML: {first}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping with sections data, model, train, optim")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Set each ``section.key=value`` (value parsed as YAML) in the raw config mapping."""
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"override {item!r} must look like section.key=value, e.g. train.epochs=3")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"override {item!r}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text) if text else None


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Turn pydantic's first error into one line that names the key and what is allowed."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "config"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"unknown config key {key}{hint}; allowed here: {', '.join(allowed)}"
    if err["type"] == "literal_error":
        return f"{key}={value_at(raw, loc)!r} is not allowed; choose one of {err['ctx']['expected']}"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":
        return f"invalid config: {msg}" if len(loc) <= 1 else f"{key}: {msg}"
    return f"{key}={value_at(raw, loc)!r}: {msg}"


def _fields_at(loc: list[str]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return list(model.model_fields)


def value_at(raw: Any, loc: list[str]) -> Any:
    """The value at a key's path in a raw config mapping, None where the path is missing."""
    for part in loc:
        if isinstance(raw, dict) and part in raw:
            raw = raw[part]
        else:
            return None
    return raw

from pathlib import Path

import pytest

from bigmodel.config import DEFAULT_CONFIG, load_config
from bigmodel.errors import UserError


def test_default_config_is_fashion_mnist():
    cfg = load_config()
    assert cfg.data.name == "fashion-mnist"
    assert cfg.model.name == DEFAULT_CONFIG["model"]["name"]
    assert cfg.name == "fashion-mnist-cnn"


def test_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "data: {name: digits}\nmodel: {name: cnn, width: 8}\ntrain: {epochs: 2}\noptim: {lr: 0.1}\n"
    )
    cfg = load_config(path, ["train.epochs=5", "optim.name=sgd", "model.depth=2", "data.augment.hflip=true"])
    assert cfg.name == "exp"
    assert cfg.train.epochs == 5
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.1
    assert cfg.model.settings() == {"width": 8, "depth": 2}
    assert cfg.data.augment.hflip is True


def test_data_path_replaces_the_default_name():
    cfg = load_config(None, ["data.path=/some/folder"])
    assert cfg.data.name is None and cfg.data.path == "/some/folder"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochz=3", "unknown config key train.epochz (did you mean epochs?); allowed here: epochs"),
        ("optim.name=adamx", "optim.name='adamx' is not allowed; choose one of 'sgd', 'adam' or 'adamw'"),
        ("optim.lr=-0.1", "optim.lr=-0.1: Input should be greater than 0"),
        ("train.precision=fp8", "train.precision='fp8' is not allowed"),
        ("train.monitor=val/acc", "train.monitor='val/acc' is not allowed"),
        ("trian.epochs=3", "unknown config key trian (did you mean train?)"),
        ("train.batch_size=many", "train.batch_size='many'"),
        ("epochs", "must look like section.key=value"),
    ],
)
def test_mistakes_name_the_key_and_what_is_allowed(override: str, expected: str):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_missing_and_broken_config_files(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config(listy)


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml")), ids=str)
def test_every_shipped_config_is_valid_and_builds_its_model(path: Path):
    from bigmodel.data import is_text
    from bigmodel.data.bundle import DataInfo
    from bigmodel.models import build_model

    cfg = load_config(path)
    if cfg.model.settings().get("pretrained"):
        # The pretrained encoder is another config's output: check that it is, then build at random.
        source = Path(cfg.model.settings()["pretrained"])  # runs/NAME/hf, written by configs/NAME.yaml
        assert source.parts[0] == "runs" and source.name == "hf" and str(source) == cfg.data.tokenizer
        assert (path.parent / f"{source.parent.name}.yaml").is_file()
        cfg.model = cfg.model.model_copy(update={"pretrained": None})
    if cfg.data.objective != "classify":
        info = DataInfo(cfg.data.objective, [], [cfg.data.max_length], "test", vocab_size=cfg.data.vocab_size)
    elif is_text(cfg.data):
        info = DataInfo("text", ["neg", "pos"], [cfg.data.max_length], "test", vocab_size=cfg.data.vocab_size)
    else:
        info = DataInfo("image", [str(i) for i in range(10)], [1, 28, 28], "test")
    assert sum(p.numel() for p in build_model(cfg.model, info).parameters()) > 0

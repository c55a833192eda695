"""A model the user wrote: ``model.name=file.py:Name`` or ``package.module:Name`` trains in the same loop,
on real data, and every later command (evaluate, predict, explain, report, --resume) reloads it from any
directory; its mistakes are one-line errors that leave no run behind."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from bigmodel.cli import main
from bigmodel.config import ModelConfig, load_config
from bigmodel.data.bundle import DataInfo
from bigmodel.errors import UserError
from bigmodel.models import build_model
from bigmodel.models.custom import UserModel, load_user_model
from bigmodel.run import RunDir
from conftest import DIGITS_ARGS, digit_png, run_cli

# The seed document's network as a user writes it: positional `forward(self, x)`, its flatten size
# worked out by hand from the image size, sized from the data through `info`.
SEED_CNN = """
import torch.nn as nn
import torch.nn.functional as F


class SeedCNN(nn.Module):
    def __init__(self, info):
        super().__init__()
        channels, height, width = info.input_shape
        self.conv1 = nn.Conv2d(channels, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)  # 64*2*2 for 8x8 digits
        self.fc1 = nn.Linear(self.flat, 128)
        self.fc2 = nn.Linear(128, info.num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, self.flat)
        return self.fc2(F.relu(self.fc1(x)))
"""

BUILDER = """
import torch.nn as nn

from bigmodel.data import DataInfo


def build(data: DataInfo, width: int = 16) -> nn.Module:
    channels, height, size = data.input_shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * height * size, width),
        nn.ReLU(),
        nn.Linear(width, data.num_classes),
    )
"""

TEXT_MODEL = """
import torch.nn as nn


class MeanEmbedding(nn.Module):
    def __init__(self, info, dim=16):
        super().__init__()
        self.embeddings = nn.Embedding(info.vocab_size, dim, padding_idx=info.pad_token_id)
        self.head = nn.Linear(dim, info.num_classes)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        mean = (self.embeddings(input_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.head(mean)
"""

MISTAKES = """
import torch.nn as nn


class SevenWays(nn.Module):
    def __init__(self, info):
        super().__init__()
        self.fc = nn.Linear(64, 7)

    def forward(self, x):
        return self.fc(x.flatten(1))


class WrongFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(60, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def number(info):
    return 3


def strict(info, width=16):
    return nn.Linear(width, "wide")


class NotAModule:
    pass
"""

# The digits settings without their registry model: every other model.* key is a user model's setting.
DIGITS = [arg for arg in DIGITS_ARGS if not arg.startswith("model.")]


def digits_info() -> DataInfo:
    return DataInfo(kind="image", classes=[str(i) for i in range(10)], input_shape=[1, 8, 8], source="test")


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed CNN from a user's file, named by a relative path, trained 4 epochs on the digits."""
    home = tmp_path_factory.mktemp("user")
    (home / "my_nets.py").write_text(SEED_CNN, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(home)
        assert main(["train", *DIGITS, "train.epochs=4", "model.name=my_nets.py:SeedCNN", "--out=run"]) == 0
    return home / "run"


def test_the_seed_cnn_from_a_file_learns_the_digits(seed_run: Path):
    report = json.loads((seed_run / "report.json").read_text())
    assert report["test"]["accuracy"] > 0.8  # chance is 0.1; measured 0.98
    assert report["params"] == 53_002  # conv 320 + conv 18,496 + fc 32,896 + fc 1,290
    config = (seed_run / "config.yaml").read_text()
    assert f"name: {seed_run.parent / 'my_nets.py'}:SeedCNN" in config  # stored absolute
    assert "channels_last: false" in config  # the user's x.view needs (N, C, H, W) tensors


def test_every_command_reloads_a_user_model_from_another_directory(
    seed_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    monkeypatch.chdir(tmp_path)  # my_nets.py is not here: the run's config names it absolutely
    image, label = digit_png(tmp_path / "digit.png", 3)
    run = str(seed_run)
    code, out, _ = run_cli(capsys, "evaluate", run, "--json")
    assert code == 0 and json.loads(out)["accuracy"] > 0.8
    code, out, _ = run_cli(capsys, "predict", run, str(image), "--json")
    assert code == 0 and json.loads(out)[0]["top"][0]["class"] == str(label)
    assert main(["explain", run, str(image), "-o", "explained"]) == 0
    assert list((tmp_path / "explained").glob("*.png"))
    assert main(["report", run, "-o", "report.html", "--mistakes", "2"]) == 0
    assert (tmp_path / "report.html").stat().st_size > 0
    assert main(["train", "--resume", run, "train.epochs=5"]) == 0
    assert json.loads((seed_run / "report.json").read_text())["epochs"] == 5
    assert isinstance(RunDir(run).model, UserModel)


def test_the_default_run_name_is_the_data_and_the_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["data.name=digits", "model.name=nets/my_nets.py:SeedCNN"])
    assert cfg.name == "digits-seedcnn"
    assert cfg.model.name == f"{tmp_path / 'nets' / 'my_nets.py'}:SeedCNN"
    assert cfg.train.channels_last is False
    explicit = load_config(None, ["model.name=pkg.nets:Build", "train.channels_last=true"])
    assert explicit.name == "fashion-mnist-build" and explicit.model.name == "pkg.nets:Build"
    assert explicit.train.channels_last is True
    assert load_config(None, ["model.name=cnn"]).train.channels_last is True  # the registry: as before


def test_a_builder_gets_its_setting_and_a_module_path_imports_from_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userpkg").mkdir()
    (tmp_path / "userpkg" / "__init__.py").write_text("")
    (tmp_path / "userpkg" / "builders.py").write_text(BUILDER, encoding="utf-8")
    args = [*DIGITS, "train.epochs=2", "model.name=userpkg.builders:build", "model.width=8"]
    assert main(["train", *args, "--out=run"]) == 0
    model = RunDir(tmp_path / "run").model
    assert model.net[1].out_features == 8  # model.width reached the builder
    assert json.loads((tmp_path / "run" / "report.json").read_text())["test"]["accuracy"] > 0.3


def test_a_text_model_gets_ids_and_mask_by_name(tmp_path: Path, capsys: pytest.CaptureFixture):
    rng = random.Random(0)
    lines = ["text,label"]
    for i in range(60):
        good = i % 2 == 1
        words = rng.choices(["the", "film", "plot", "was", "a"], k=rng.randint(2, 8))
        words += rng.choices(["great", "superb", "moving"] if good else ["dull", "awful", "boring"], k=2)
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{'pos' if good else 'neg'}")
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "text_nets.py").write_text(TEXT_MODEL, encoding="utf-8")
    run = tmp_path / "run"
    args = [f"data.path={tmp_path / 'reviews.csv'}", "data.vocab_size=100", "data.max_length=16"]
    args += ["train.epochs=2", "train.batch_size=8", "train.progress=false", "optim.lr=0.05"]
    assert (
        main(["train", *args, f"model.name={tmp_path / 'text_nets.py'}:MeanEmbedding", f"--out={run}"]) == 0
    )
    assert json.loads((run / "report.json").read_text())["test"]["count"] == 6
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "predict", str(run), "--text", "a superb moving film", "--json")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 2
    code, out, _ = run_cli(capsys, "explain", str(run), "--text", "a superb moving film", "-o", str(tmp_path))
    assert code == 0 and "superb" in out  # attributed at the user's own nn.Embedding


def test_a_file_is_loaded_once_per_version(tmp_path: Path):
    path = tmp_path / "twice.py"
    path.write_text(SEED_CNN, encoding="utf-8")
    name = f"{path}:SeedCNN"
    first = load_user_model(name)
    assert load_user_model(name) is first  # one class, however often a run is rebuilt
    path.write_text(SEED_CNN + "\n# edited\n", encoding="utf-8")
    assert load_user_model(name) is not first  # an edited file is read afresh


def test_the_dummy_batch_leaves_the_model_training(tmp_path: Path):
    (tmp_path / "nets.py").write_text(SEED_CNN, encoding="utf-8")
    model = build_model(ModelConfig(name=f"{tmp_path / 'nets.py'}:SeedCNN"), digits_info())
    assert model.training and model.net.training
    assert model(pixels=torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_text_is_explained_at_the_one_embedding_a_model_has():
    one = UserModel(nn.Sequential(nn.Embedding(50, 4), nn.Linear(4, 2)), "one.py:One")
    assert one.embedding_layers() == [one.net[0]] and one.embeddings is one.net[0]
    bag = UserModel(nn.Sequential(nn.EmbeddingBag(50, 4), nn.Linear(4, 2)), "bag.py:Bag")
    with pytest.raises(UserError, match="explaining a text needs its token embeddings.*Sequential has none"):
        bag.embedding_layers()
    assert not hasattr(bag, "embeddings")


def test_user_models_are_classifiers(tmp_path: Path):
    (tmp_path / "nets.py").write_text(SEED_CNN, encoding="utf-8")
    mlm = DataInfo(kind="mlm", classes=[], input_shape=[32], source="test", vocab_size=100)
    with pytest.raises(UserError, match="user models are classifiers"):
        build_model(ModelConfig(name=f"{tmp_path / 'nets.py'}:SeedCNN"), mlm)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (["model.name=missing.py:Net"], "missing.py:Net: no file {home}/missing.py"),
        (
            ["model.name=mistakes.py:SevenWay"],
            "mistakes.py has no SevenWay (did you mean SevenWays?); it defines SevenWays, WrongFlatten, "
            "number, strict",
        ),
        (
            ["model.name=mistakes.py:SevenWays"],
            "mistakes.py:SevenWays returned logits of shape (2, 7) for a batch of 2 images (1x8x8); a "
            "classifier of 10 classes must return (batch, 10)",
        ),
        (
            ["model.name=mistakes.py:WrongFlatten"],
            "failed on a batch of 2 images (1x8x8), called as forward(x): RuntimeError: mat1 and mat2 shapes "
            "cannot be multiplied (2x64 and 60x10) (mistakes.py, line 20)",
        ),
        (
            ["model.name=mistakes.py:strict", "model.widht=4"],
            "model.widht is not a setting of model.name={home}/mistakes.py:strict (did you mean width?); "
            "its settings: width=16",
        ),
        (
            ["model.name=broken.py:Net"],
            "importing {home}/broken.py failed: ImportError: cannot import name 'Nothing' from 'torch.nn' ",
        ),
        (["model.name=mistakes.py:number"], "number(...) returned int, not an nn.Module"),
        (["model.name=mistakes.py:NotAModule"], "NotAModule is a class but not an nn.Module subclass"),
        (
            ["model.name=mistakes.py:strict", "model.width=8"],
            "strict(width=8) failed: TypeError: ",
        ),
        (
            ["model.name=no.such.module:Net"],
            "importing no.such.module failed: ModuleNotFoundError: No module",
        ),
        (
            ["model.name=my-nets:Net"],
            "model.name='my-nets:Net' must look like path/to/file.py:ClassOrBuilder",
        ),
    ],
)
def test_user_model_mistakes_are_one_line_errors_and_leave_no_run(
    model: list[str], message: str, in_tmp: Path, capsys: pytest.CaptureFixture
):
    (in_tmp / "mistakes.py").write_text(MISTAKES, encoding="utf-8")
    (in_tmp / "broken.py").write_text(
        "import torch.nn as nn\nfrom torch.nn import Nothing\n", encoding="utf-8"
    )
    code, out, err = run_cli(capsys, "train", *DIGITS, "train.epochs=1", *model)
    assert code == 2
    assert err.startswith("error: ") and message.format(home=in_tmp) in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (in_tmp / "runs").exists()

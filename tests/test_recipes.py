"""Per-model recipes: naming the data and the model is enough; a config file or an override wins; the
optimizer's own settings follow the optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigmodel.cli import main
from bigmodel.config import load_config
from bigmodel.recipes import RECIPES

ROOT = Path(__file__).resolve().parent.parent


def test_naming_the_data_and_the_model_gets_that_models_recipe():
    image = load_config(None, [])
    lstm = load_config(None, ["data.name=rotten-tomatoes", "model.name=lstm"])
    recipe = RECIPES[("lstm", "text")]
    assert (lstm.train.epochs, lstm.train.batch_size, lstm.train.grad_clip) == (4, 64, 1.0)
    assert (lstm.optim.lr, lstm.optim.weight_decay, lstm.data.max_length) == (
        recipe["optim"]["lr"],
        recipe["optim"]["weight_decay"],
        recipe["data"]["max_length"],
    )
    assert (image.train.epochs, image.optim.lr) == (12, 3e-3)  # the image CNN's, unchanged
    assert lstm.data.augment.crop_padding == 0  # nothing of the image recipe reaches a text model
    own = load_config(None, [f"model.name={ROOT / 'examples' / 'seed_cnn.py'}:CNN"])  # no recipe of its own
    assert (own.train.epochs, own.optim.lr, own.optim.schedule) == (12, 3e-3, "onecycle")  # the default's
    bert = load_config(None, ["data.name=imdb", "model.name=bert"])
    assert (bert.optim.lr, bert.optim.schedule, bert.train.batch_size) == (5e-5, "cosine", 32)


def test_an_override_or_a_config_file_wins_over_the_recipe():
    cfg = load_config(None, ["data.name=imdb", "model.name=bow", "train.epochs=2", "optim.lr=0.01"])
    assert (cfg.train.epochs, cfg.optim.lr, cfg.data.max_length) == (2, 0.01, 512)
    from_file = load_config(ROOT / "configs" / "rt-best.yaml")  # bow, tuned on Rotten Tomatoes
    assert (from_file.data.max_length, from_file.train.batch_size, from_file.optim.lr) == (64, 32, 0.01)


def test_switching_the_optimizer_resets_what_it_reads_differently(capsys: pytest.CaptureFixture):
    adam = load_config(None, ["optim.name=adam"])  # the CNN's AdamW decay would be an L2 penalty
    assert (adam.optim.weight_decay, adam.optim.lr) == (0.0, 3e-3)  # Adam reads the lr as AdamW does
    assert capsys.readouterr().err == (
        "warning: optim.name=adam: weight_decay=0.05 was tuned for adamw, which reads them differently; "
        "using optim.weight_decay=0 (set them to choose)\n"
    )
    sgd = load_config(ROOT / "configs" / "fashion-cnn.yaml", ["optim.name=sgd"])
    assert (sgd.optim.lr, sgd.optim.weight_decay) == (0.05, 5e-4)
    assert "lr=0.003, weight_decay=0.05 were tuned for adamw" in capsys.readouterr().err
    chosen = load_config(None, ["optim.name=adam", "optim.weight_decay=0.01"])
    assert chosen.optim.weight_decay == 0.01 and capsys.readouterr().err == ""
    same = load_config(ROOT / "configs" / "fashion-resnet.yaml")  # its own sgd: nothing switched
    assert same.optim.lr == 0.1 and capsys.readouterr().err == ""


def test_models_lists_each_recipe(capsys: pytest.CaptureFixture):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.count("recipe for ") == len(RECIPES)
    assert "recipe for text: data.max_length=512 data.vocab_size=30000 train.epochs=5" in out

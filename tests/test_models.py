import copy

import pytest
import torch

from bigmodel.config import ModelConfig
from bigmodel.data.bundle import DataInfo
from bigmodel.errors import UserError
from bigmodel.models import build_model, list_models, model_settings
from bigmodel.models.vision import SeedCNN


def info(shape: list[int], classes: int = 10) -> DataInfo:
    return DataInfo(kind="image", classes=[str(i) for i in range(classes)], input_shape=shape, source="test")


@pytest.mark.parametrize("name", ["mlp", "seed-cnn", "cnn", "resnet"])
@pytest.mark.parametrize("shape", [[1, 28, 28], [3, 32, 32], [1, 8, 8]])
def test_every_model_maps_images_to_logits(name: str, shape: list[int]):
    if name == "cnn" and shape[-1] == 8:
        model = build_model(ModelConfig(name=name, depth=2), info(shape, classes=7))
    else:
        model = build_model(ModelConfig(name=name), info(shape, classes=7))
    out = model(pixels=torch.randn(5, *shape)).logits
    assert out.shape == (5, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_seed_cnn_computes_its_flatten_size():
    # The seed hard-coded 64*6*6; for 28×28 input after conv, conv, pool it is 64*12*12.
    model = SeedCNN([1, 28, 28], 10)
    assert model.fc1.in_features == 64 * 12 * 12
    assert SeedCNN([3, 32, 32], 10).fc1.in_features == 64 * 14 * 14


def test_seed_cnn_trains_the_same_channels_last_and_keeps_the_gradient_channels_last():
    torch.manual_seed(0)
    plain = SeedCNN([1, 28, 28], 10)
    fast = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28)
    pooled_grads = []
    fast.features[4].register_full_backward_hook(lambda m, g_in, g_out: pooled_grads.append(g_out[0]))
    for model, pixels in ((plain, x), (fast, x.contiguous(memory_format=torch.channels_last))):
        model(pixels).logits.square().sum().backward()
    for a, b in zip(plain.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6)
    # The max-pool's output gradient arrives in its own layout: its backward converts nothing.
    assert pooled_grads[0].is_contiguous(memory_format=torch.channels_last)
    assert not pooled_grads[0].is_contiguous()


def test_an_image_model_refuses_text_data():
    text = DataInfo(kind="text", classes=["neg", "pos"], input_shape=[32], source="test", vocab_size=100)
    with pytest.raises(
        UserError,
        match="model 'cnn' classifies images, but the data is text to classify; choose one of attention",
    ):
        build_model(ModelConfig(name="cnn"), text)


def test_registry_lists_models_and_settings():
    assert {"mlp", "seed-cnn", "cnn", "resnet"} <= set(list_models())
    assert model_settings("cnn") == {"width": 32, "depth": 3, "dropout": 0.2}


def test_settings_change_the_model():
    small = build_model(ModelConfig(name="cnn", width=8), info([1, 28, 28]))
    large = build_model(ModelConfig(name="cnn", width=16), info([1, 28, 28]))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(large) > 3 * count(small)
    resnet = build_model(ModelConfig(name="resnet", blocks=[1, 1]), info([1, 28, 28]))
    assert len(resnet.stages) == 2


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            ModelConfig(name="resnet50"),
            "unknown model.name='resnet50' (did you mean resnet?); choose one of attention, bert, bert-mlm,",
        ),
        (
            ModelConfig(name="cnn", widht=3),
            "model.widht is not a setting of model 'cnn' (did you mean width?)",
        ),
        (ModelConfig(name="cnn", width="wide"), "model.width='wide'"),
        (ModelConfig(name="seed-cnn", width=3), "its settings: none"),
        (
            ModelConfig(name="lstm"),
            "model 'lstm' classifies text, but the data is images; choose one of cnn, mlp,",
        ),
    ],
)
def test_model_mistakes(cfg: ModelConfig, expected: str):
    with pytest.raises(UserError) as err:
        build_model(cfg, info([1, 28, 28]))
    assert expected in str(err.value)

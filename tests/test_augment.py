import torch

from bigmodel.config import AugmentConfig
from bigmodel.data.augment import ImageTransform, mix_images, random_crop, random_erasing, random_hflip


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_shifts_each_image_within_the_padding():
    x = torch.zeros(64, 1, 10, 10)
    x[:, :, 5, 5] = 1.0  # one bright pixel per image
    out = random_crop(x, 2, gen())
    assert out.shape == x.shape
    pos = out.view(64, -1).argmax(dim=1)
    rows, cols = pos // 10, pos % 10
    assert out.view(64, -1).sum(dim=1).eq(1).all()  # the pixel always stays inside
    assert rows.min() >= 3 and rows.max() <= 7 and cols.min() >= 3 and cols.max() <= 7
    assert len(set(pos.tolist())) > 5  # and images move independently


def test_random_crop_keeps_channels_together():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    out = random_crop(x, 1, gen())
    # Each channel moved by the same offset: the difference between channels is constant where not padded.
    diff = out[:, 1] - out[:, 0]
    inside = (out[:, 0] != 0) & (out[:, 1] != 0)
    assert torch.all(diff[inside] == 36)


def test_hflip_flips_about_half():
    x = torch.arange(4.0).view(1, 1, 1, 4).repeat(1000, 1, 1, 1)
    out = random_hflip(x, gen())
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert torch.equal(out[out[:, 0, 0, 0] == 3][0], x[0].flip(-1))


def test_random_erasing_zeroes_a_rectangle_in_chosen_images():
    x = torch.ones(2000, 1, 20, 20)
    out = random_erasing(x, 0.5, gen())
    erased = (out == 0).view(2000, -1).sum(dim=1)
    share = (erased > 0).float().mean().item()
    assert 0.45 < share < 0.55
    frac = erased[erased > 0].float() / 400
    assert frac.min() >= 0.0025 and frac.max() <= 0.5


def test_transform_is_reproducible_and_normalises():
    transform = ImageTransform([0.5], [0.25], AugmentConfig(crop_padding=2, hflip=True, random_erasing=0.5))
    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    a = transform({"pixels": x}, gen(3))["pixels"]
    b = transform({"pixels": x}, gen(3))["pixels"]
    assert torch.equal(a, b)
    plain = ImageTransform([0.5], [0.25])({"pixels": x})["pixels"]
    assert torch.allclose(plain, (x.float() / 255 - 0.5) / 0.25)


def test_mixup_blends_each_image_with_another_in_the_drawn_share():
    x = torch.rand(16, 1, 8, 8)
    mixed, with_, weight = mix_images(x, 0.4, 0.0, gen())
    w = float(weight)
    assert 0.0 <= w <= 1.0 and sorted(with_.tolist()) == list(range(16))
    assert torch.allclose(mixed, w * x + (1 - w) * x[with_])
    again = mix_images(x, 0.4, 0.0, gen())  # the batch's generator decides: resumable
    assert torch.equal(again[0], mixed) and float(again[2]) == w


def test_cutmix_pastes_one_patch_and_weighs_by_what_is_left():
    x = torch.arange(16, dtype=torch.float32).view(16, 1, 1, 1).expand(16, 1, 8, 8).clone()  # image i is i
    draws = [mix_images(x, 0.0, 1.0, gen(seed)) for seed in range(20)]
    for mixed, with_, weight in draws:
        own = (mixed == x).float().mean(dim=(1, 2, 3))  # each image's share of its own pixels
        moved = with_ != torch.arange(16)
        assert torch.allclose(own[moved], torch.full_like(own[moved], float(weight)))
        assert ((mixed == x) | (mixed == x[with_])).all()  # every pixel is its own or its partner's
    assert len({round(float(w), 3) for _, _, w in draws}) > 5  # patch sizes vary


def test_a_transform_with_mixing_marks_the_batch_for_the_loss():
    transform = ImageTransform([0.5], [0.5], AugmentConfig(mixup=0.2, cutmix=1.0))
    out = transform({"pixels": torch.randint(0, 255, (8, 1, 6, 6), dtype=torch.uint8)}, gen())
    assert set(out) == {"pixels", "mix_with", "mix_weight"}
    assert set(transform({"pixels": torch.zeros(8, 1, 6, 6, dtype=torch.uint8)}, None)) == {"pixels"}

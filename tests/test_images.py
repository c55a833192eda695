"""Tests for the image readers, on real files written to tmp_path."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bigmodel.data.images import load_digits, load_idx_split, load_image_folder, load_npz, read_idx
from bigmodel.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")
_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    code = _CODES[arr.dtype.type]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


# ------------------------------------------------------------------------------------------ IDX


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-3, 0, 7], dtype=np.int8),
        np.array([[-30000, 5], [12, 30000]], dtype=np.int16),
        np.array([-(2**31), 1, 2**31 - 1], dtype=np.int32),
        np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
        np.array([np.pi, -np.e, 1e300], dtype=np.float64),
    ],
    ids=["ubyte", "byte", "short", "int", "float", "double"],
)
def test_idx_round_trip(tmp_path: Path, arr: np.ndarray, gz: bool) -> None:
    # The suffix lies on purpose: gzip is detected from the content.
    path = write_idx(tmp_path / ("data.idx" if gz else "data.idx.gz"), arr, gz)
    out = read_idx(path)
    assert out.dtype == arr.dtype and out.dtype.isnative
    assert out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_idx_split_shapes(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 7), dtype=np.uint8)
    y = np.array([0, 1, 2, 1, 0], dtype=np.uint8)
    xi, yi = load_idx_split(write_idx(tmp_path / "x.gz", x, True), write_idx(tmp_path / "y", y, False))
    assert xi.shape == (5, 1, 6, 7) and xi.dtype == np.uint8
    assert yi.dtype == np.int64
    np.testing.assert_array_equal(xi[:, 0], x)
    np.testing.assert_array_equal(yi, y)


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} not present on this machine")
def test_fashion_mnist_test_split() -> None:
    images = read_idx(FASHION / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    labels = read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,)
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    x, y = load_idx_split(FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 1, 28, 28) and y.dtype == np.int64


def test_idx_truncated_payload(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-60])
    with pytest.raises(UserError, match=r"images-idx3-ubyte is truncated: expected 160 bytes .* found 100"):
        read_idx(path)
    gz_path = tmp_path / "train-images-idx3-ubyte.gz"
    gz_path.write_bytes(gzip.compress(data[:-60]))  # valid gzip, short payload
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte\.gz is truncated.* found 100"):
        read_idx(gz_path)


def test_idx_extra_bytes(tmp_path: Path) -> None:
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(4, dtype=np.uint8)) + b"\x00")
    with pytest.raises(UserError, match="long.idx has more data"):
        read_idx(path)


def test_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (50, 28, 28), dtype=np.uint8)
    compressed = gzip.compress(idx_bytes(arr))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz .*truncated"):
        read_idx(path)
    path.write_bytes(compressed[:-4])  # whole payload, but the trailer is cut
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte\.gz"):
        read_idx(path)


def test_idx_garbage_and_bad_magic(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"this is not an idx file at all")
    with pytest.raises(UserError, match="garbage.bin is not an IDX file"):
        read_idx(garbage)
    wrong_type = tmp_path / "wrongtype.idx"
    wrong_type.write_bytes(struct.pack(">BBBBI", 0, 0, 0x07, 1, 1) + b"\x00")
    with pytest.raises(UserError, match="wrongtype.idx is not an IDX file"):
        read_idx(wrong_type)
    bad_gzip = tmp_path / "bad.gz"
    bad_gzip.write_bytes(b"\x1f\x8b" + b"\xff" * 30)  # gzip magic, nonsense after it
    with pytest.raises(UserError, match="bad.gz"):
        read_idx(bad_gzip)
    tiny = tmp_path / "tiny.idx"
    tiny.write_bytes(b"\x00\x00")
    with pytest.raises(UserError, match="tiny.idx is too short"):
        read_idx(tiny)


def test_idx_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothere-idx3-ubyte.gz does not exist"):
        read_idx(tmp_path / "nothere-idx3-ubyte.gz")
    with pytest.raises(UserError, match="is a directory"):
        read_idx(tmp_path)


def test_idx_huge_header_in_small_gzip(tmp_path: Path) -> None:
    path = tmp_path / "liar.gz"
    path.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 0x08, 3, 60000, 60000, 60000)))
    with pytest.raises(UserError, match="liar.gz is corrupt"):
        read_idx(path)


def test_idx_split_count_mismatch(tmp_path: Path) -> None:
    x = write_idx(tmp_path / "imgs.gz", np.zeros((6, 2, 2), dtype=np.uint8), True)
    y = write_idx(tmp_path / "labs.gz", np.zeros(5, dtype=np.uint8), True)
    with pytest.raises(UserError, match=r"imgs\.gz has 6 images but .*labs\.gz has 5 labels"):
        load_idx_split(x, y)


def test_idx_split_swapped_files(tmp_path: Path) -> None:
    x = write_idx(tmp_path / "imgs.gz", np.zeros((6, 2, 2), dtype=np.uint8), True)
    y = write_idx(tmp_path / "labs.gz", np.zeros(6, dtype=np.uint8), True)
    with pytest.raises(UserError, match="labs.gz .*expected 3-D images"):
        load_idx_split(y, x)


# --------------------------------------------------------------------------------- image folder


def make_folder(root: Path) -> None:
    """Three classes in mixed modes, sizes and formats."""
    rng = np.random.default_rng(2)
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "bird").mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "RGB").save(root / "cat" / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(root / "cat" / "b.JPG")
    Image.fromarray(rng.integers(0, 256, (10, 12, 4), dtype=np.uint8), "RGBA").save(root / "dog" / "c.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8), "RGB").save(root / "dog" / "d.jpeg")
    palette = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").convert("P")
    palette.save(root / "bird" / "e.png")
    (root / "bird" / "notes.txt").write_text("not an image")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder(tmp_path: Path, channels: int) -> None:
    make_folder(tmp_path)
    x, y, names = load_image_folder(tmp_path, size=16, channels=channels)
    assert names == ["bird", "cat", "dog"]
    assert x.shape == (5, channels, 16, 16) and x.dtype == np.uint8
    assert x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 1, 1, 2, 2])  # files in sorted order within each class
    if channels == 3:
        grey = x[2]  # cat/b.JPG was saved as greyscale
        np.testing.assert_array_equal(grey[0], grey[1])
        np.testing.assert_array_equal(grey[0], grey[2])


def test_image_folder_values_and_auto_size(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    img = np.arange(8 * 6, dtype=np.uint8).reshape(8, 6)
    Image.fromarray(img, "L").save(tmp_path / "a" / "1.png")
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8), "L").save(tmp_path / "b" / "1.bmp")
    x, y, names = load_image_folder(tmp_path)  # all grey: one channel; size from the first image
    assert x.shape == (2, 1, 8, 6)
    np.testing.assert_array_equal(x[0, 0], img)
    np.testing.assert_array_equal(y, [0, 1])
    rgb = np.zeros((8, 6, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 2] = 200, 50
    Image.fromarray(rgb, "RGB").save(tmp_path / "b" / "2.png")
    x, _, _ = load_image_folder(tmp_path)  # one colour image makes the whole set RGB
    assert x.shape == (3, 3, 8, 6)
    np.testing.assert_array_equal(x[0, 1], img)  # greyscale copied into every channel
    assert (x[2, 0] == 200).all() and (x[2, 1] == 0).all() and (x[2, 2] == 50).all()


def test_image_folder_class_order(tmp_path: Path) -> None:
    make_folder(tmp_path)
    x, y, names = load_image_folder(tmp_path, size=8, channels=3, classes=["dog", "cat", "bird", "fish"])
    assert names == ["dog", "cat", "bird", "fish"]
    np.testing.assert_array_equal(y, [2, 1, 1, 0, 0])
    with pytest.raises(UserError, match="dog"):
        load_image_folder(tmp_path, size=8, classes=["cat", "bird"])


def test_image_folder_empty_class(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("nothing here")
    with pytest.raises(UserError, match=r"class folder .*empty has no images \(png, jpg"):
        load_image_folder(tmp_path, size=8)


def test_image_folder_corrupt_image(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "cat" / "broken.png").write_bytes(np.random.default_rng(3).bytes(200))
    with pytest.raises(UserError, match=r"cannot read image .*broken\.png: "):
        load_image_folder(tmp_path, size=8)


def test_image_folder_bad_roots(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing does not exist"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(UserError, match="file.png is not a directory"):
        load_image_folder(tmp_path / "file.png")
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "1.png")
    with pytest.raises(UserError, match="flat has no class sub-folders"):
        load_image_folder(tmp_path / "flat")


# ------------------------------------------------------------------------------------------ npz


def test_npz_channels_first_from_hw_uint8(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    xtr = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    xte = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=xtr, y_train=np.arange(6), x_test=xte, y_test=np.array([[1], [0]]))
    d = load_npz(path)
    assert d["x_train"].shape == (6, 1, 5, 7) and d["x_train"].dtype == np.uint8
    np.testing.assert_array_equal(d["x_train"][:, 0], xtr)
    assert d["x_test"].shape == (2, 1, 5, 7)
    np.testing.assert_array_equal(d["y_test"], [1, 0])
    assert d["y_train"].dtype == np.int64
    assert "classes" not in d


def test_npz_channels_last_float(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    path = tmp_path / "f.npz"
    np.savez(
        path,
        x_train=pixels.astype(np.float32) / 255.0,
        y_train=np.array([0, 1, 2, 1]),
        x_test=pixels[:2].astype(np.float64) / 255.0,
        y_test=np.array([2, 0]),
        classes=np.array(["a", "b", "c"]),
    )
    d = load_npz(path)
    assert d["x_train"].shape == (4, 3, 6, 5) and d["x_train"].dtype == np.uint8
    assert d["x_train"].flags.c_contiguous
    np.testing.assert_array_equal(d["x_train"], pixels.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(d["x_test"], pixels[:2].transpose(0, 3, 1, 2))
    assert list(d["classes"]) == ["a", "b", "c"]


def test_npz_float_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "big.npz"
    x = np.full((2, 4, 4), 200.0)
    np.savez(path, x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(2, int))
    with pytest.raises(UserError, match=r"x_train holds floats from 200.0 to 200.0; expected floats in \[0"):
        load_npz(path)


def test_npz_missing_key_lists_found(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 3, 3), np.uint8), y_train=np.zeros(2, int), images=np.zeros(1))
    with pytest.raises(UserError, match=r"partial\.npz lacks key\(s\) x_test, y_test; found keys: .*images"):
        load_npz(path)


def test_npz_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    x = np.zeros((3, 4, 4), np.uint8)
    np.savez(path, x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(3, int))
    with pytest.raises(UserError, match="x_train has 3 images but y_train has 2 labels"):
        load_npz(path)


def test_npz_not_an_npz(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_bytes(b"definitely not a zip archive")
    with pytest.raises(UserError, match=r"fake\.npz is not an \.npz file"):
        load_npz(path)
    path.write_bytes(b"PK\x03\x04 broken zip archive")
    with pytest.raises(UserError, match=r"fake\.npz is not a valid \.npz"):
        load_npz(path)
    npy = tmp_path / "one.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(UserError, match=r"one\.npy holds a single array"):
        load_npz(npy)
    with pytest.raises(UserError, match="absent.npz does not exist"):
        load_npz(tmp_path / "absent.npz")


def test_npz_refuses_pickles(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    obj = np.empty(2, dtype=object)
    obj[:] = [1, 2]
    np.savez(path, x_train=np.zeros((2, 3, 3), np.uint8), y_train=obj, x_test=np.zeros((1, 3, 3)), y_test=obj)
    with pytest.raises(UserError, match=r"obj\.npz: y_train holds Python objects"):
        load_npz(path)


# --------------------------------------------------------------------------------------- digits


def test_digits() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.uint8
    assert x.max() == 255 and x.min() == 0
    assert y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))


def test_an_image_in_two_splits_is_left_out_of_the_test_and_copies_split_together(tmp_path: Path, capsys):
    from bigmodel.config import DataConfig
    from bigmodel.data.vision import build_image_data

    x, y = load_digits()
    root = tmp_path / "folder"
    for split, numbers in (("train", range(0, 60)), ("test", range(60, 80))):
        for i in numbers:
            (root / split / str(y[i])).mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0]).save(root / split / str(y[i]) / f"{i}.png")
    for copy in (1, 2, 3):  # a training image three more times, and two test images that are training images
        Image.fromarray(x[0, 0]).save(root / "train" / str(y[0]) / f"copy{copy}.png")
    for i in (5, 6):
        Image.fromarray(x[i, 0]).save(root / "test" / str(y[i]) / f"seen{i}.png")
    data = build_image_data(DataConfig(name=None, path=str(root), val_fraction=0.2))
    err = capsys.readouterr().err
    assert "3 training and 0 test images repeat an earlier one of their split (the same pixels)" in err
    assert "2 test images are training images, left out of the test split" in err
    assert len(data.test) == 20 and len(data.train) + len(data.val) == 63
    image = np.ascontiguousarray(x[0])
    counts = [
        int((split.features["pixels"].numpy() == image).reshape(len(split), -1).all(1).sum())
        for split in (data.train, data.val)
    ]
    assert sorted(counts) == [0, 4]  # the four copies are on one side of the split

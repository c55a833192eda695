"""Real Fashion-MNIST slices and image folders of one's own, end to end through the CLI."""

import json
from pathlib import Path

import pytest
from PIL import Image

from bigmodel.cli import main
from bigmodel.data import sources
from bigmodel.data.images import load_idx_split
from conftest import FASHION_DIR

pytestmark = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="Fashion-MNIST missing: `make test` installs dataset-fashion-mnist"
)


def fashion_test_images(n: int):
    files = sources.locate("fashion-mnist")
    x, y = load_idx_split(files["test_images"], files["test_labels"])
    return x[:n], y[:n]


@pytest.mark.slow
def test_fashion_slice_trains_evaluates_and_predicts(tmp_path: Path, capsys):
    out = tmp_path / "run"
    argv = ["train", "model.name=seed-cnn", "data.limit=4000", "train.epochs=2", "train.progress=false"]
    assert main([*argv, f"--out={out}"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["test"]["count"] == 10_000
    assert report["test"]["accuracy"] > 0.75
    assert list(report["test"]["per_class"])[:2] == ["T-shirt/top", "Trouser"]
    x, y = fashion_test_images(8)
    paths = []
    for i in range(8):
        paths.append(tmp_path / f"item{i}.png")
        Image.fromarray(x[i, 0]).convert("RGB").save(paths[-1])  # RGB in, grey model: converted
    capsys.readouterr()
    assert main(["predict", str(out), *map(str, paths), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 8 and all(len(r["top"]) == 3 for r in results)


def write_folder(root: Path, x, y, classes: list[str]) -> None:
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0]).save(folder / f"{i}.png" if i % 2 else folder / f"{i}.jpg")


def test_image_folder_of_ones_own(tmp_path: Path, capsys):
    x, y = fashion_test_images(1200)
    keep = y < 3  # three classes: T-shirt, Trouser, Pullover
    x, y = x[keep], y[keep]
    classes = ["shirt", "trouser", "pullover"]
    write_folder(tmp_path / "data" / "train", x[:300], y[:300], classes)
    write_folder(tmp_path / "data" / "test", x[300:], y[300:], classes)
    out = tmp_path / "run"
    argv = [
        "train",
        f"data.path={tmp_path / 'data'}",
        "data.image_size=24",
        "model.name=cnn",
        "model.depth=2",
    ]
    argv += ["train.epochs=4", "train.batch_size=32", "train.progress=false", f"--out={out}"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["test"]["per_class"]) == ["pullover", "shirt", "trouser"]  # sorted folder names
    assert report["test"]["count"] == len(y) - 300
    assert report["test"]["accuracy"] > 0.7
    assert json.loads((out / "data.json").read_text())["input_shape"] == [1, 24, 24]


def test_empty_class_folder_is_a_clear_error(tmp_path: Path, capsys, in_tmp: Path):
    x, y = fashion_test_images(40)
    write_folder(tmp_path / "data", x, y % 2, ["a", "b"])
    (tmp_path / "data" / "c").mkdir()
    assert main(["train", f"data.path={tmp_path / 'data'}"]) == 2
    err = capsys.readouterr().err
    assert "class folder" in err and "has no images" in err and err.count("\n") == 1
    assert not (in_tmp / "runs").exists()


def test_corrupt_idx_in_a_folder_of_ones_own(tmp_path: Path, capsys, in_tmp: Path):
    files = sources.locate("fashion-mnist")
    data = tmp_path / "kmnist-like"
    data.mkdir()
    for role, name in (("test_images", "t10k-images"), ("test_labels", "t10k-labels")):
        (data / f"{name}-idx-ubyte.gz").write_bytes(files[role].read_bytes())
    (data / "train-labels-idx1-ubyte.gz").write_bytes(files["test_labels"].read_bytes())
    (data / "train-images-idx3-ubyte.gz").write_bytes(files["test_images"].read_bytes()[:5000])  # truncated
    assert main(["train", f"data.path={data}"]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and err.count("\n") == 1

"""Readers that turn image files on disk into in-memory uint8 arrays shaped (N, C, H, W).

Every format a user can point a config at (IDX as used by MNIST and its siblings, a folder of
images per class, a Keras-style ``.npz``, scikit-learn's bundled digits) ends up in the same layout,
so the rest of the pipeline never cares where the pixels came from. Anything wrong with a user's
file becomes a ``UserError`` that names the file and says what was expected.
"""

from __future__ import annotations

import gzip
import io
import math
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from bigmodel.errors import UserError

__all__ = ["decode_image", "read_idx", "load_idx_split", "load_image_folder", "load_npz", "load_digits"]

# IDX type codes (third magic byte); all multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot compress better than about 1032:1, so a gzip file claiming more is corrupt.
_MAX_DEFLATE_RATIO = 1100

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_EXT_LIST = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
# Modes that carry no colour: a folder made only of these loads as one channel.
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")


# --------------------------------------------------------------------------------------------- IDX


def _read_exact(f: BinaryIO, n: int) -> tuple[bytearray, int]:
    """Fill a fresh writable buffer so np.frombuffer can wrap it without another copy."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return buf, got


def _parse_idx(f: BinaryIO, path: Path, file_size: int, gzipped: bool) -> np.ndarray:
    head, got = _read_exact(f, 4)
    if got < 4:
        raise UserError(f"{path} is too short to be an IDX file ({got} bytes); download it again")
    if head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise UserError(
            f"{path} is not an IDX file: it starts with bytes {bytes(head).hex(' ')}, expected "
            f"00 00 <type 08/09/0b/0c/0d/0e> <ndim> (MNIST-style files such as train-images-idx3-ubyte.gz)"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    if ndim == 0:
        raise UserError(f"{path} is not a usable IDX file: its header declares 0 dimensions")
    raw_dims, got = _read_exact(f, 4 * ndim)
    if got < 4 * ndim:
        raise UserError(f"{path} is truncated inside its header; download it again")
    dims = tuple(int.from_bytes(raw_dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    count = math.prod(dims)
    expected = count * dtype.itemsize

    header_len = 4 + 4 * ndim
    if not gzipped and expected > file_size - header_len:
        raise UserError(
            f"{path} is truncated: expected {expected} bytes of data, "
            f"found {max(file_size - header_len, 0)}; download it again"
        )
    if gzipped and expected > _MAX_DEFLATE_RATIO * file_size + 65536:
        raise UserError(
            f"{path} is corrupt or not an IDX file: its header declares shape {dims} ({expected} bytes), "
            f"more than a {file_size}-byte gzip file can hold; download it again"
        )

    buf, got = _read_exact(f, expected)
    if got < expected:
        raise UserError(
            f"{path} is truncated: expected {expected} bytes of data, found {got}; download it again"
        )
    if f.read(1):  # also makes gzip verify its CRC and length trailer
        raise UserError(
            f"{path} has more data than its header declares (shape {dims}, {expected} bytes); "
            "it is corrupt or not an IDX file"
        )

    arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(dims)
    if not arr.dtype.isnative:
        arr.byteswap(inplace=True)  # the buffer is ours, so swap in place instead of copying
        arr = arr.view(arr.dtype.newbyteorder("="))
    return arr


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not, judging by content because downloads are often renamed.

    The array comes back writable and in native byte order so it can go straight into torch.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            file_size = raw.seek(0, 2)
            raw.seek(0)
            gzipped = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if gzipped:
                with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                    return _parse_idx(gz, path, file_size, gzipped=True)
            return _parse_idx(raw, path, file_size, gzipped=False)
    except FileNotFoundError:
        raise UserError(f"IDX file {path} does not exist; check the path in your config") from None
    except IsADirectoryError:
        raise UserError(
            f"{path} is a directory; expected an IDX file such as train-images-idx3-ubyte.gz"
        ) from None
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path} is a corrupt or truncated gzip file ({e}); download it again") from None
    except OSError as e:
        raise UserError(f"cannot read IDX file {path}: {e.strerror or e}") from None


def load_idx_split(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pair an IDX image file with its label file, checking they belong together before training."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3:
        raise UserError(
            f"{images} holds an array of shape {x.shape}; expected 3-D images (N, H, W) "
            "like train-images-idx3-ubyte.gz (are the image and label files swapped?)"
        )
    if x.dtype != np.uint8:
        raise UserError(
            f"{images} holds {x.dtype} values; expected unsigned bytes (IDX type 0x08) as in MNIST"
        )
    if y.ndim != 1:
        raise UserError(
            f"{labels} holds an array of shape {y.shape}; expected 1-D labels (N,) "
            "like train-labels-idx1-ubyte.gz (are the image and label files swapped?)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{labels} holds {y.dtype} values; expected integer class labels")
    if len(x) != len(y):
        raise UserError(
            f"{images} has {len(x)} images but {labels} has {len(y)} labels; "
            "they must come from the same split"
        )
    return x[:, None], y.astype(np.int64)


# ------------------------------------------------------------------------------------ image folder


class ImageTooLarge(UserError):
    """An image whose header declares more pixels than the budget: refused before it is decoded (a
    decompression bomb is a few kilobytes that decode to gigabytes)."""


def _read_image(
    file: Path | BinaryIO,
    mode: str | None,
    target: tuple[int, int] | None,
    name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Decode one file to (H, W) or (H, W, 3) uint8; with mode None the image's own colourfulness decides.
    ``name`` is what messages call it (default: the file); ``max_pixels`` refuses larger images unread."""
    name = name or str(file)
    try:
        with Image.open(file) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLarge(
                    f"image {name} is {im.width}x{im.height} pixels, more than the {max_pixels:,} allowed"
                )
            want = mode or ("L" if im.mode in _GREY_MODES else "RGB")
            img = im.convert(want) if im.mode != want else im
            if target is not None and img.size != target:
                img = img.resize(target, Image.Resampling.BILINEAR)
            return np.asarray(img)
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"image {name} is too large to decode: {e}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "not an image format Pillow reads" if isinstance(e, UnidentifiedImageError) else str(e)
        raise UserError(f"cannot read image {name}: {reason or type(e).__name__}") from None


def read_image(file: str | Path, height: int, width: int, channels: int) -> np.ndarray:
    """One image file shaped like a run's training images, (C, H, W) uint8: what ``predict`` feeds."""
    file = Path(file)
    if not file.is_file():
        raise UserError(f"image {file} does not exist; give the path of a PNG or JPEG file")
    return _shaped(file, height, width, channels)


def decode_image(
    data: bytes,
    height: int,
    width: int,
    channels: int,
    name: str = "(bytes)",
    max_pixels: int | None = None,
) -> np.ndarray:
    """``read_image`` for an image file's bytes (an upload): decoded, converted and resized exactly as
    ``read_image`` does. ``name`` is what messages call it; an image of more than ``max_pixels`` pixels
    (or one Pillow takes for a decompression bomb) raises ``ImageTooLarge`` before it is decoded."""
    return _shaped(io.BytesIO(data), height, width, channels, name, max_pixels)


def _shaped(
    source: Path | BinaryIO,
    height: int,
    width: int,
    channels: int,
    name: str | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    arr = _read_image(source, "L" if channels == 1 else "RGB", (width, height), name, max_pixels)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(
    root: str | Path,
    size: int | None = None,
    channels: int | None = None,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a folder-per-class image tree (the torchvision ImageFolder layout) into one array.

    ``classes`` fixes the label order, so a test folder is read with the training run's labels.
    With ``channels`` None a folder of purely greyscale images stays one channel; otherwise RGB.
    Without ``size`` every image is resized to the first image's size.
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"image folder {root} does not exist; check the path in your config")
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; expected a folder with one sub-folder per class")
    if channels not in (None, 1, 3):
        raise UserError(f"channels must be 1 or 3 (or left unset), got {channels}")
    if size is not None and size < 1:
        raise UserError(f"image size must be a positive number of pixels, got {size}")

    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise UserError(
            f"{root} has no class sub-folders; expected one sub-folder per class, e.g. {root}/cat/1.png"
        )
    if classes is None:
        names = found
    else:
        names = list(classes)
        if len(set(names)) != len(names):
            raise UserError(f"the class list {names} has duplicate names; each class must appear once")
        unknown = [c for c in found if c not in names]
        if unknown:
            raise UserError(
                f"{root} has class folder(s) {', '.join(unknown)} that are not among the known classes "
                f"{', '.join(names)}; remove them or use the same classes as the training data"
            )
    index = {name: i for i, name in enumerate(names)}

    files: list[Path] = []
    labels: list[int] = []
    for name in found:
        folder = root / name
        members = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if not members:
            raise UserError(f"class folder {folder} has no images ({_EXT_LIST})")
        files.extend(members)
        labels.extend([index[name]] * len(members))

    mode = {1: "L", 3: "RGB", None: None}[channels]
    target = (size, size) if size is not None else None
    decoded: list[np.ndarray] = []
    for file in files:
        arr = _read_image(file, mode, target)
        if target is None:
            target = (arr.shape[1], arr.shape[0])  # PIL sizes are (width, height)
        decoded.append(arr)

    c = channels or (1 if all(a.ndim == 2 for a in decoded) else 3)
    width, height = target
    out = np.empty((len(decoded), c, height, width), dtype=np.uint8)
    for i, arr in enumerate(decoded):
        # One copy per image into the final layout; a grey image fills all channels when c is 3.
        out[i] = arr if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out, np.asarray(labels, dtype=np.int64), names


# --------------------------------------------------------------------------------------------- npz


def _images_to_nchw(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Bring Keras-style image arrays to contiguous uint8 (N, C, H, W).

    Layouts: (N, H, W) gets a channel axis; (N, H, W, C) with C 1 or 3 is transposed; (N, C, H, W)
    with C 1 or 3 is kept. When both readings fit, channels-last wins (the Keras convention).
    Values: uint8 is kept; other integers must lie in 0..255; floats must lie in [0, 1] and are
    scaled by 255 and rounded, so ``x / 255.0`` saved by a user round-trips exactly.
    """
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise UserError(
            f"{path}: {key} has shape {x.shape}; "
            "expected (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3"
        )

    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.size == 0:
        return np.ascontiguousarray(x, dtype=np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        lo, hi = float(x.min()), float(x.max())
        if not (lo >= 0.0 and hi <= 1.0):  # also false for NaN
            raise UserError(
                f"{path}: {key} holds floats from {lo} to {hi}; expected floats in [0, 1] or uint8 in 0..255"
            )
        if x.flags.writeable:  # freshly loaded from the file, so scaling in place costs no copy
            np.multiply(x, 255, out=x)
            np.rint(x, out=x)
            return x.astype(np.uint8, order="C")
        return np.rint(x * 255).astype(np.uint8, order="C")
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{path}: {key} holds integers from {lo} to {hi}; expected pixel values 0..255")
        return x.astype(np.uint8, order="C")
    raise UserError(f"{path}: {key} has dtype {x.dtype}; expected uint8 pixels or floats in [0, 1]")


def _labels(y: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Accept (N,) or Keras' (N, 1) integer labels, as int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UserError(
            f"{path}: {key} has shape {y.shape}; expected one integer label per image, shape (N,)"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: {key} has dtype {y.dtype}; expected integer class labels")
    if y.size and y.min() < 0:
        raise UserError(
            f"{path}: {key} has negative labels (min {y.min()}); expected class indices 0, 1, ..."
        )
    return y.astype(np.int64)


def _read_npz_arrays(f: BinaryIO, path: Path) -> dict[str, np.ndarray]:
    """Pull the Keras keys out of an open archive, refusing pickled (object) arrays."""
    with np.load(f, allow_pickle=False) as data:
        found = list(data.files)
        missing = [k for k in _NPZ_REQUIRED if k not in found]
        if missing:
            raise UserError(
                f"{path} lacks key(s) {', '.join(missing)}; found keys: {', '.join(found) or '(none)'}; "
                f"expected {', '.join(_NPZ_REQUIRED)} (optional classes)"
            )
        arrays: dict[str, np.ndarray] = {}
        for key in (*_NPZ_REQUIRED, "classes"):
            if key not in found:
                continue
            try:
                arrays[key] = data[key]
            except ValueError as e:
                if "allow_pickle" not in str(e):
                    raise
                raise UserError(
                    f"{path}: {key} holds Python objects, which are refused because unpickling "
                    "can run code; store plain numeric arrays (or an array of str for classes)"
                ) from None
    return arrays


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Read a Keras-style ``.npz`` (x_train, y_train, x_test, y_test, optional classes) as (N, C, H, W) uint8.

    Pickles are refused so a downloaded file cannot run code; float images in [0, 1] become uint8
    (x * 255, rounded). See ``_images_to_nchw`` for the accepted layouts.
    """
    path = Path(path)
    hint = "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            f.seek(0)
            # Checked up front: np.load's own complaint about a non-zip file talks about pickles.
            if head.startswith(b"\x93NUMPY"):
                raise UserError(f"{path} holds a single array (.npy), not an .npz archive; {hint}")
            if not head.startswith(b"PK"):
                raise UserError(f"{path} is not an .npz file (it is not a zip archive); {hint}")
            # Passing our own file object: np.load leaks the handle it opens when the zip is corrupt.
            arrays = _read_npz_arrays(f, path)
    except FileNotFoundError:
        raise UserError(f"npz file {path} does not exist; check the path in your config") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; expected an .npz file") from None
    except (zipfile.BadZipFile, ValueError, EOFError, zlib.error, OSError) as e:
        raise UserError(f"{path} is not a valid .npz file ({e}); {hint}") from None

    out: dict[str, np.ndarray] = {}
    for split in ("train", "test"):
        x = _images_to_nchw(arrays[f"x_{split}"], f"x_{split}", path)
        y = _labels(arrays[f"y_{split}"], f"y_{split}", path)
        if len(x) != len(y):
            raise UserError(f"{path}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels")
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    if out["x_train"].shape[1:] != out["x_test"].shape[1:]:
        raise UserError(
            f"{path}: x_train images are {out['x_train'].shape[1:]} (C, H, W) but x_test images are "
            f"{out['x_test'].shape[1:]}; both splits must have the same image shape"
        )

    if "classes" in arrays:
        names = arrays["classes"]
        if names.dtype.kind == "S":
            names = names.astype(str)
        if names.dtype.kind != "U" or names.ndim != 1:
            raise UserError(
                f"{path}: classes must be a 1-D array of strings, got {names.dtype} of shape {names.shape}"
            )
        top = max((int(out[k].max()) for k in ("y_train", "y_test") if out[k].size), default=-1)
        if top >= len(names):
            raise UserError(f"{path}: labels go up to {top} but classes names only {len(names)} classes")
        out["classes"] = names
    return out


# ------------------------------------------------------------------------------------------ digits


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits: a real image dataset that needs no download, for quick runs.

    Pixel counts 0..16 are stretched to 0..255 so they look like every other uint8 image source.
    """
    from sklearn.datasets import load_digits as sk_load_digits  # slow import, only when asked for

    bunch = sk_load_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return x, bunch.target.astype(np.int64)

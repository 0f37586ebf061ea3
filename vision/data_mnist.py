"""MNIST and Fashion-MNIST read from their IDX files (gzipped or not) in torchvision's layout, DATA_DIR/MNIST/raw/
and DATA_DIR/FashionMNIST/raw/, downloaded with torchvision when missing. Val is the last 5,000 images of the
official training set (55,000 / 5,000 / 10,000)."""

from __future__ import annotations

import gzip
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch

from fovea.errors import ConfigError
from fovea.vision.image_data import DIGIT_CLASSES, ImageData, missing_files, take, torchvision_download

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> torch.Tensor:
    """The tensor in an IDX file (MNIST's format), gzipped or not, read by torchvision's reader once its header has
    been checked here: a corrupt file raises ``ConfigError`` naming it and what is wrong (torchvision's reader
    would fail an ``assert`` or a reshape).

    Args:
        path: the file; gzip is recognised by its content, not its name.
    """
    from torchvision.datasets.mnist import SN3_PASCALVINCENT_TYPEMAP, read_sn3_pascalvincent_tensor

    path = Path(path)
    raw = path.read_bytes()
    gzipped = raw[:2] == b"\x1f\x8b"
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ConfigError(f"{path} is a damaged gzip file ({e}); delete it and download it again") from None
    dims = _check_idx(path, raw)
    if 0 in dims:  # torch.frombuffer, under torchvision's reader, refuses an empty buffer
        return torch.empty(dims, dtype=SN3_PASCALVINCENT_TYPEMAP[raw[2]])
    if not gzipped:
        return read_sn3_pascalvincent_tensor(str(path))
    with tempfile.TemporaryDirectory() as tmp:  # torchvision's reader takes a file name (its MNIST unzips first)
        plain = Path(tmp) / path.stem
        plain.write_bytes(raw)
        return read_sn3_pascalvincent_tensor(str(plain))


def _check_idx(path: Path, raw: bytes) -> tuple[int, ...]:
    """The dimensions in the header of ``raw``; a ConfigError naming ``path`` unless it is a whole IDX file of 1 to
    3 dimensions."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ConfigError(
            f"{path} is not an IDX file: it starts with {raw[:4].hex() or 'nothing'}, not 0000 then "
            f"a type code ({', '.join(f'{t:02x}' for t in _IDX_TYPES)}) and a number of dimensions"
        )
    ndim, dtype = raw[3], np.dtype(_IDX_TYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"{path} is truncated: it ends inside its header ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    if ndim > 3:
        raise ConfigError(f"{path} holds {dtype.name} {dims}: MNIST's IDX files hold 1 (labels) or 3 (images)")
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        problem = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise ConfigError(
            f"{path} is {problem}: its header promises {dims} {dtype.name} values ({expected} bytes), "
            f"it holds {len(raw) - header} bytes of data; delete it and download it again"
        )
    return dims


def _find(folder: Path, base: str) -> Path | None:
    return next((p for p in (folder / base, folder / f"{base}.gz") if p.is_file()), None)


def _idx_split(split: str, data_dir: Path, folder_name: str, classes: tuple[str, ...]) -> ImageData:
    folder = data_dir / folder_name / "raw"
    names = _MNIST_FILES["test" if split == "test" else "train"]
    paths = [_find(folder, n) for n in names]
    if None in paths:
        reason = torchvision_download(folder_name, data_dir)
        paths = [_find(folder, n) for n in names]
        if None in paths:
            every = [f"{n}[.gz]" for pair in _MNIST_FILES.values() for n in pair]
            raise missing_files(folder_name, folder, every, reason or "it did not write them")
    image_path, label_path = paths
    images, labels = read_idx(image_path).numpy(), read_idx(label_path).numpy()
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ConfigError(f"{image_path} holds {images.dtype.name} {images.shape}, not uint8 images (N, H, W)")
    if labels.ndim != 1 or labels.dtype != np.uint8 or len(labels) != len(images):
        raise ConfigError(
            f"{label_path} holds {labels.dtype.name} {labels.shape}: expected {len(images)} uint8 "
            f"labels, one per image of {image_path.name}"
        )
    if len(labels) and labels.max() >= len(classes):
        raise ConfigError(f"{label_path} holds label {labels.max()}; {folder_name} has {len(classes)} classes")
    return take(images[:, None], labels, split, classes)


def mnist(split: str, *, data_dir: Path) -> ImageData:
    """MNIST as (N, 1, 28, 28) uint8 in 0..255: 55,000 / 5,000 / 10,000, from DATA_DIR/MNIST/raw/."""
    return _idx_split(split, data_dir, "MNIST", DIGIT_CLASSES)


def fashion_mnist(split: str, *, data_dir: Path) -> ImageData:
    """Fashion-MNIST as (N, 1, 28, 28) uint8 in 0..255: 55,000 / 5,000 / 10,000, from DATA_DIR/FashionMNIST/raw/."""
    return _idx_split(split, data_dir, "FashionMNIST", FASHION_CLASSES)

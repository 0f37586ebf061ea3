"""CIFAR-10 read from DATA_DIR/cifar-10-batches-py/ (the python pickles, through an unpickler that can only rebuild
numpy arrays) or DATA_DIR/cifar-10-batches-bin/, downloaded with torchvision when missing. Val is the last 5,000
images of the official training set (45,000 / 5,000 / 10,000)."""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fovea.errors import ConfigError
from fovea.vision.image_data import ImageData, missing_files, take, torchvision_download

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
"""The batch files of the official training set and of the test set."""


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as pickle protocol 2 uses it for bytes, held to latin-1 (no other codec can be named)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return _codecs.encode(text, encoding)


_ARRAY = np.zeros(1)
_CIFAR_GLOBALS: dict[tuple[str, str], Any] = {
    **{(m, "_reconstruct"): _ARRAY.__reduce__()[0] for m in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(m, "_frombuffer"): _ARRAY.__reduce_ex__(5)[0] for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR-10 batch: dicts, lists, strings and numpy arrays; any other global is refused."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _CIFAR_GLOBALS[(module, name)]
        except KeyError:
            raise ConfigError(
                f"{self.path} is not a CIFAR-10 batch: it asks to load {module}.{name}, "
                f"which could run code; it was not loaded"
            ) from None


def _cifar_pickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except ConfigError:
        raise
    except Exception as e:  # a damaged pickle fails in many ways: all are "not a batch"
        raise ConfigError(f"{path} is not a CIFAR-10 batch: unpickling failed ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise ConfigError(f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype.name} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ConfigError(f"{path} is not a CIFAR-10 batch: its 'data' is {found}, not uint8 (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros(0)
    if labels.shape != (len(data),):
        raise ConfigError(f"{path} is not a CIFAR-10 batch: its 'labels' are not {len(data)} integers, one per image")
    return data, labels


def _cifar_binary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, np.uint8)
    if len(raw) % 3073:
        raise ConfigError(
            f"{path} is truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not a whole "
            f"number of 3,073-byte records (1 label byte + 3,072 pixel bytes)"
        )
    records = raw.reshape(-1, 3073)
    return records[:, 1:], records[:, 0].astype(np.int64)


def _cifar_files(data_dir: Path, names: list[str]) -> tuple[list[Path], bool] | None:
    py = [data_dir / "cifar-10-batches-py" / n for n in names]
    if all(p.is_file() for p in py):
        return py, True
    binary = [data_dir / "cifar-10-batches-bin" / f"{n}.bin" for n in names]
    return (binary, False) if all(p.is_file() for p in binary) else None


def cifar10(split: str, *, data_dir: Path) -> ImageData:
    """CIFAR-10 as (N, 3, 32, 32) uint8 in 0..255: 45,000 / 5,000 / 10,000, from DATA_DIR/cifar-10-batches-py/
    (or cifar-10-batches-bin/)."""
    names = CIFAR_BATCHES["test" if split == "test" else "train"]
    found = _cifar_files(data_dir, names)
    if found is None:
        reason = torchvision_download("CIFAR10", data_dir)
        found = _cifar_files(data_dir, names)
        if found is None:
            every = CIFAR_BATCHES["train"] + CIFAR_BATCHES["test"]
            raise missing_files("CIFAR-10", data_dir / "cifar-10-batches-py", every, reason or "it did not write them")
    paths, is_pickle = found
    parts = [(_cifar_pickle if is_pickle else _cifar_binary)(p) for p in paths]
    for p, (_, labels) in zip(paths, parts, strict=True):
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(
                f"{p} holds label {labels.max() if labels.max() > 9 else labels.min()}; CIFAR-10 labels are 0..9"
            )
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return take(data.reshape(-1, 3, 32, 32), labels, split, CIFAR10_CLASSES)

"""Image datasets shared by vision and generative models, held in memory as uint8 tensors.

Every data set has the splits train, val and test; ``load(name, split)`` returns one as an ``ImageData``.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 real images, pixel values 0..16), split
1000 train / 350 val / 447 test in file order: the split of the public deep-generative-modelling
course code on this data, so results compare. It ships with scikit-learn: no download.

``mnist`` and ``fashion-mnist`` read the IDX files (gzipped or not) in torchvision's layout,
DATA_DIR/MNIST/raw/ and DATA_DIR/FashionMNIST/raw/; ``cifar10`` reads DATA_DIR/cifar-10-batches-py/
(the python pickles, through an unpickler that can only rebuild numpy arrays) or
DATA_DIR/cifar-10-batches-bin/. Missing files are downloaded with torchvision; where that fails the
error names the files expected and where. Their val split is the last min(5000, N // 10) images of
the official training set (the last 5,000: MNIST 55,000 / 5,000, CIFAR-10 45,000 / 5,000), train is
the rest, and test is the official test set.

``folder:PATH`` is a folder of images, one subfolder per class (PATH/CLASS/*.png, .jpg, .jpeg, .bmp,
.gif), with train/, val/ and test/ subfolders of that form when PATH has them; otherwise each class's
files, sorted by name, go by position: 0, 10, 20, ... to val, 1, 11, 21, ... to test, the rest to
train (80 / 10 / 10).

``atari:GAME`` and ``atari:GAME:rgb`` are frames of an Atari game played by a uniformly random policy
(84x84 grey, or 64x64 colour), one kept every 4 agent steps; the splits are played from their own
seeds, so they share no episode. They are generated, and cached when ``load`` is given a cache_dir.

DATA_DIR is ``load``'s data_dir, else $FOVEA_DATA, else ./data.
"""

from __future__ import annotations

import _codecs
import gzip
import inspect
import os
import pickle
import re
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from fovea.config import suggest
from fovea.errors import ConfigError

SPLITS = ("train", "val", "test")
ATARI_FRAMES = {"train": 4000, "val": 500, "test": 500}
"""Frames per split of the ``atari:`` data sets."""
ATARI_SEEDS = {"train": 0, "val": 1, "test": 2}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
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
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PARAMETERISED = ("atari:GAME[:rgb]", "folder:PATH")


@dataclass(frozen=True)
class ImageData:
    """Images and labels of one split.

    Args:
        images: (N, C, H, W) uint8 pixels in 0..max_value.
        labels: (N,) int64 class indices.
        max_value: the largest pixel value (16 for digits, 255 for 8-bit images); models divide by it.
        classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    max_value: int
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device), self.max_value, self.classes)


Loader = Callable[[str, Path, "Path | None"], ImageData]
_DATASETS: dict[str, Loader] = {}


def register_dataset(name: str):
    """Decorator: ``fn(split) -> ImageData`` becomes loadable as ``load(name, split)``.

    A loader that also takes the keyword arguments ``data_dir`` (a Path) and ``cache_dir`` (a Path or
    None) gets them from ``load``. Names cannot hold ':', which is kept for parameterised names.
    """

    def deco(fn: Callable[..., ImageData]) -> Callable[..., ImageData]:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        if ":" in name:
            raise ValueError(f"dataset name {name!r} holds ':', which is kept for parameterised names")
        wanted = {"data_dir", "cache_dir"} & set(inspect.signature(fn).parameters)
        _DATASETS[name] = lambda split, data_dir, cache_dir: fn(
            split, **{k: v for k, v in (("data_dir", data_dir), ("cache_dir", cache_dir)) if k in wanted}
        )
        return fn

    return deco


def datasets() -> list[str]:
    """The data set names, parameterised ones in their pattern form (``atari:GAME[:rgb]``, ``folder:PATH``)."""
    return sorted(_DATASETS) + list(PARAMETERISED)


def check_name(name: str) -> None:
    """Raise ``ConfigError`` (with the closest names) unless ``name`` names a data set.

    For ``atari:GAME[:rgb]`` the game must be one ale-py ships; for ``folder:PATH`` only the form is
    checked here, the folder when it is loaded.
    """
    _resolve(name)


def check_dataset_field(cfg: Any) -> None:
    """``check_name`` of a config's ``dataset`` field, the error naming the field (``KNNConfig.dataset = ...``)."""
    try:
        _resolve(cfg.dataset)
    except ConfigError as e:
        raise ConfigError(f"{type(cfg).__name__}.dataset = {cfg.dataset!r} is not allowed: {e}") from None


def data_root(data_dir: str | Path | None = None) -> Path:
    """Where downloaded data sets live: ``data_dir``, else $FOVEA_DATA, else ./data."""
    return Path(data_dir or os.environ.get("FOVEA_DATA") or "data").expanduser()


def load(
    name: str, split: str, *, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> ImageData:
    """The ``split`` (train, val or test) of dataset ``name``.

    Args:
        name: a name from ``datasets()``, e.g. ``mnist``, ``atari:pong:rgb`` or ``folder:~/pictures``.
        split: train, val or test.
        data_dir: where downloaded data sets live (MNIST, CIFAR-10...); default $FOVEA_DATA, else ./data.
        cache_dir: where generated data (Atari frames) is cached; None: not cached.
    """
    loader = _resolve(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return loader(split, data_root(data_dir), Path(cache_dir).expanduser() if cache_dir else None)


def _resolve(name: str) -> Loader:
    if name in _DATASETS:
        return _DATASETS[name]
    family, _, arg = name.partition(":")
    if family == "atari":
        parts = arg.split(":")
        if not parts[0] or len(parts) > 2 or (len(parts) == 2 and parts[1] != "rgb"):
            raise ConfigError(f"dataset {name!r} is not of the form atari:GAME or atari:GAME:rgb (e.g. atari:pong)")
        game, rgb = atari_game(parts[0]), len(parts) == 2
        return lambda split, data_dir, cache_dir: _atari(game, rgb, split, cache_dir)
    if family == "folder":
        if not arg:
            raise ConfigError(
                f"dataset {name!r} needs a path: folder:PATH, with images in PATH/CLASS/ ({', '.join(IMAGE_SUFFIXES)})"
            )
        return lambda split, data_dir, cache_dir: _folder(Path(arg).expanduser(), split)
    raise ConfigError(f"unknown dataset {name!r}; {suggest(name, datasets())}")


def _val_count(n: int) -> int:
    return min(5000, n // 10)


def _take(images: np.ndarray, labels: np.ndarray, split: str, classes: tuple[str, ...]) -> ImageData:
    """``split`` of an official training set (train: all but the last ``_val_count``; val: those) or its test set."""
    if split != "test":
        cut = len(images) - _val_count(len(images))
        images, labels = (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])
    return ImageData(
        torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)), 255, classes
    )


def _torchvision_download(dataset: str, root: Path) -> str | None:
    """Download torchvision's ``dataset`` (MNIST, FashionMNIST, CIFAR10) into ``root``: None, or why it failed."""
    try:
        import torchvision.datasets

        getattr(torchvision.datasets, dataset)(root=str(root), train=True, download=True)
    except Exception as e:  # no network, a proxy, a full disk: all reported the same way
        reason = str(e).strip().splitlines()
        return f"{type(e).__name__}: {reason[-1] if reason else ''}"[:200]
    return None


def _missing(what: str, folder: Path, files: list[str], reason: str) -> ConfigError:
    return ConfigError(
        f"{what} not found: expected {', '.join(files)} in {folder}; downloading it with torchvision failed "
        f"({reason}). Put the files there, or pass --data-dir DIR (or set FOVEA_DATA=DIR) to the folder that holds "
        f"{folder.parent.name if folder.name == 'raw' else folder.name}/"
    )


# ----------------------------------------------------------------------------- digits


@register_dataset("digits")
def digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits as (N, 1, 8, 8) uint8 in 0..16; 1000 / 350 / 447 in file order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    lo, hi = {"train": (0, 1000), "val": (1000, 1350), "test": (1350, 1797)}[split]
    images = torch.from_numpy(d.images[lo:hi].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target[lo:hi].astype(np.int64))
    return ImageData(images, labels, 16, DIGIT_CLASSES)


# ----------------------------------------------------------------------------- MNIST, Fashion-MNIST

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
        reason = _torchvision_download(folder_name, data_dir)
        paths = [_find(folder, n) for n in names]
        if None in paths:
            every = [f"{n}[.gz]" for pair in _MNIST_FILES.values() for n in pair]
            raise _missing(folder_name, folder, every, reason or "it did not write them")
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
    return _take(images[:, None], labels, split, classes)


@register_dataset("mnist")
def mnist(split: str, *, data_dir: Path) -> ImageData:
    """MNIST as (N, 1, 28, 28) uint8 in 0..255: 55,000 / 5,000 / 10,000, from DATA_DIR/MNIST/raw/."""
    return _idx_split(split, data_dir, "MNIST", DIGIT_CLASSES)


@register_dataset("fashion-mnist")
def fashion_mnist(split: str, *, data_dir: Path) -> ImageData:
    """Fashion-MNIST as (N, 1, 28, 28) uint8 in 0..255: 55,000 / 5,000 / 10,000, from DATA_DIR/FashionMNIST/raw/."""
    return _idx_split(split, data_dir, "FashionMNIST", FASHION_CLASSES)


# ----------------------------------------------------------------------------- CIFAR-10

_CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


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


@register_dataset("cifar10")
def cifar10(split: str, *, data_dir: Path) -> ImageData:
    """CIFAR-10 as (N, 3, 32, 32) uint8 in 0..255: 45,000 / 5,000 / 10,000, from DATA_DIR/cifar-10-batches-py/
    (or cifar-10-batches-bin/)."""
    names = _CIFAR_BATCHES["test" if split == "test" else "train"]
    found = _cifar_files(data_dir, names)
    if found is None:
        reason = _torchvision_download("CIFAR10", data_dir)
        found = _cifar_files(data_dir, names)
        if found is None:
            every = _CIFAR_BATCHES["train"] + _CIFAR_BATCHES["test"]
            raise _missing("CIFAR-10", data_dir / "cifar-10-batches-py", every, reason or "it did not write them")
    paths, is_pickle = found
    parts = [(_cifar_pickle if is_pickle else _cifar_binary)(p) for p in paths]
    for p, (_, labels) in zip(paths, parts, strict=True):
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            raise ConfigError(
                f"{p} holds label {labels.max() if labels.max() > 9 else labels.min()}; CIFAR-10 labels are 0..9"
            )
    data = np.concatenate([d for d, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    return _take(data.reshape(-1, 3, 32, 32), labels, split, CIFAR10_CLASSES)


# ----------------------------------------------------------------------------- folder:PATH

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _class_files(folder: Path) -> dict[str, list[Path]]:
    """{class: its image files sorted by name} for the class subfolders of ``folder``."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {
        d.name: sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) for d in classes
    }


def _open_image(path: Path):
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"cannot read image {path}: {e}; remove it or replace it with a valid image") from None


def _is_grey(image) -> bool:
    if image.mode in _GREY_MODES:
        return True
    if image.mode == "P":
        palette = np.asarray(image.getpalette() or [0, 0, 1], np.uint8).reshape(-1, 3)
        return bool((palette == palette[:, :1]).all())
    return False


def _folder(root: Path, split: str) -> ImageData:
    """``split`` of an image folder: PATH/CLASS/* or PATH/{train,val,test}/CLASS/* (see the module docstring)."""
    if not root.is_dir():
        raise ConfigError(
            f"dataset folder {root} does not exist (or is not a folder); expected images in "
            f"{root}/CLASS/ or {root}/train/CLASS/"
        )
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if split_dirs:
        if split not in split_dirs:
            raise ConfigError(
                f"dataset folder {root} has {', '.join(f'{s}/' for s in split_dirs)} but no {split}/ "
                f"subfolder; add {root / split}/CLASS/ with images"
            )
        per_split = {s: _class_files(d) for s, d in split_dirs.items()}
    else:
        per_split = {s: {} for s in SPLITS}
        for cls, files in _class_files(root).items():
            for s, offset in (("val", 0), ("test", 1)):
                per_split[s][cls] = files[offset::10]
            per_split["train"][cls] = [f for i, f in enumerate(files) if i % 10 > 1]
    classes = sorted({c for by_class in per_split.values() for c in by_class})
    every = [f for by_class in per_split.values() for files in by_class.values() for f in files]
    if not every:
        raise ConfigError(
            f"dataset folder {root} holds no images: expected {root}/CLASS/*.png (or "
            f"{', '.join(IMAGE_SUFFIXES[1:])}), one subfolder per class"
        )
    sizes: dict[tuple[int, int], Path] = {}
    grey = True
    for f in every:
        with _open_image(f) as image:
            sizes.setdefault(image.size, f)
            grey = grey and _is_grey(image)
    if len(sizes) > 1:
        shown = "; ".join(f"{w}x{h}: {f}" for (w, h), f in sorted(sizes.items()))
        raise ConfigError(f"the images in {root} differ in size ({shown}); resize them all to one size")
    files = [(f, classes.index(c)) for c, fs in per_split[split].items() for f in fs]
    if not files:
        raise ConfigError(
            f"dataset folder {root} leaves the {split} split empty: "
            + (
                f"{root / split} holds no images"
                if split_dirs
                else "with no train/val/test subfolders, val takes the 1st, 11th, 21st... file of each class (by name) "
                "and test the 2nd, 12th, 22nd..., so every class needs at least 3 images"
            )
        )
    (w, h), channels = next(iter(sizes)), 1 if grey else 3
    images = np.empty((len(files), channels, h, w), np.uint8)
    for i, (f, _) in enumerate(files):
        with _open_image(f) as image:
            try:
                pixels = np.asarray(image.convert("L" if grey else "RGB"))
            except (OSError, ValueError, SyntaxError) as e:
                raise ConfigError(f"cannot read image {f}: {e}; remove it or replace it with a valid image") from None
        images[i] = pixels[None] if grey else pixels.transpose(2, 0, 1)
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return ImageData(torch.from_numpy(images), labels, 255, tuple(classes))


# ----------------------------------------------------------------------------- atari:GAME[:rgb]


def atari_game(name: str) -> str:
    """ale-py's ROM id (``space_invaders``) for ``space_invaders``, ``SpaceInvaders`` or ``space-invaders``."""
    import ale_py.roms

    known = sorted(ale_py.roms.get_all_rom_ids())
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    if key not in known:
        raise ConfigError(f"unknown Atari game {name!r}; {suggest(key, known)}")
    return key


def collect_atari(game: str, rgb: bool, count: int, seed: int) -> np.ndarray:
    """``count`` frames of ``game`` played by a uniformly random policy, one kept every 4 agent steps.

    Args:
        game: an ale-py ROM id (``pong``).
        rgb: 64x64 colour frames (count, 3, 64, 64); else 84x84 grey (count, 1, 84, 84). Resized with INTER_AREA.
        count: frames to keep.
        seed: seeds the game and the policy; episodes restart when they end.
    """
    import ale_py
    import cv2
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make(
        f"ALE/{game.title().replace('_', '')}-v5",
        obs_type="rgb" if rgb else "grayscale",
        frameskip=4,
        repeat_action_probability=0.0,
    )
    size = 64 if rgb else 84
    frames = np.empty((count, 3 if rgb else 1, size, size), np.uint8)
    rng = np.random.default_rng(seed)
    try:
        env.reset(seed=seed)
        actions, kept, steps = int(env.action_space.n), 0, 0
        while kept < count:
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(actions)))
            steps += 1
            if steps % 4 == 0:
                small = cv2.resize(obs, (size, size), interpolation=cv2.INTER_AREA)
                frames[kept] = small.transpose(2, 0, 1) if rgb else small[None]
                kept += 1
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    return frames


def _read_atari_cache(path: Path, shape: tuple[int, int, int]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {s: z[s] for s in SPLITS}
        for s, a in arrays.items():
            if a.dtype != np.uint8 or a.shape != (ATARI_FRAMES[s], *shape):
                raise ValueError(
                    f"its {s} frames are {a.dtype.name} {a.shape}, expected uint8 {(ATARI_FRAMES[s], *shape)}"
                )
    except Exception as e:  # a cache is ours to rebuild, whatever is wrong with it
        warnings.warn(f"Atari frame cache {path} is unusable ({e}); collecting the frames again", stacklevel=4)
        return None
    return arrays


def _atari(game: str, rgb: bool, split: str, cache_dir: Path | None) -> ImageData:
    shape = (3, 64, 64) if rgb else (1, 84, 84)
    if cache_dir is None:
        images = collect_atari(game, rgb, ATARI_FRAMES[split], ATARI_SEEDS[split])
    else:
        path = cache_dir / f"atari-{game}{'-rgb' if rgb else ''}.npz"
        arrays = _read_atari_cache(path, shape)
        if arrays is None:
            arrays = {s: collect_atari(game, rgb, ATARI_FRAMES[s], ATARI_SEEDS[s]) for s in SPLITS}
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with tmp.open("wb") as f:
                    np.savez_compressed(f, **arrays)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        images = arrays[split]
    return ImageData(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64), 255, ("frame",))


# ----------------------------------------------------------------------------- batches


def batches(
    data: ImageData, batch_size: int, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of (images, labels): shuffled with ``generator`` when given, in order otherwise.

    In-memory indexing rather than a DataLoader: for data sets that fit on the device this is the
    fast path (no worker processes, no per-sample Python).
    """
    n = len(data)
    order = torch.randperm(n, generator=generator).to(data.images.device) if generator is not None else None
    for i in range(0, n, batch_size):
        idx = order[i : i + batch_size] if order is not None else slice(i, i + batch_size)
        yield data.images[idx], data.labels[idx]


def global_batches(
    data: ImageData, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Training minibatches as ``batches`` shuffles them, each split over the torchrun processes: yields this
    process's (images, labels) and the global batch's size (for ``fovea.distributed.scale_loss``). On one
    process it is ``batches`` with the size added. Under torchrun a last batch too small to give every process
    two images is left out of the epoch (on every process alike)."""
    from fovea import distributed

    for idx, total in distributed.global_batches(len(data), batch_size, generator, data.images.device):
        yield data.images[idx], data.labels[idx], total


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in x and y, filling with zeros (data augmentation)."""
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (b, 2), generator=generator).to(images.device)
    rows = off[:, :1] + torch.arange(h, device=images.device)  # (B, H)
    cols = off[:, 1:] + torch.arange(w, device=images.device)  # (B, W)
    out = padded[torch.arange(b, device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

"""Data set loaders on small files written here in each data set's own format (no network, no downloads)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fovea.errors import ConfigError
from fovea.vision import data as vdata
from fovea.vision import data_atari

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    raw = struct.pack(">HBB", 0, codes[array.dtype], array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)


def mnist_arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_mnist(root: Path, folder: str, *, gz: bool, n_train: int = 30, n_test: int = 7) -> dict[str, np.ndarray]:
    arrays = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = mnist_arrays(n, seed)
        write_idx(root / folder / "raw" / f"{prefix}-images-idx3-ubyte", images, gz=gz)
        write_idx(root / folder / "raw" / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


@pytest.fixture
def no_download(monkeypatch):
    """torchvision's downloaders fail as they do offline; the calls they got are recorded."""
    import torchvision.datasets

    calls = []

    def offline(name):
        def fail(root, train=True, download=False):
            calls.append((name, root, download))
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://..., got URLError")

        return fail

    for name in ("MNIST", "FashionMNIST", "CIFAR10"):
        monkeypatch.setattr(torchvision.datasets, name, offline(name))
    return calls


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx_files_and_splits_off_the_last_tenth(tmp_path, gz):
    arrays = write_mnist(tmp_path, "MNIST", gz=gz)
    train = vdata.load("mnist", "train", data_dir=tmp_path)
    val = vdata.load("mnist", "val", data_dir=tmp_path)
    test = vdata.load("mnist", "test", data_dir=tmp_path)
    assert (len(train), len(val), len(test)) == (27, 3, 7)  # val = last min(5000, 30 // 10)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert train.shape == (1, 28, 28) and train.max_value == 255 and train.classes == tuple("0123456789")
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train_images"][:27])
    assert np.array_equal(val.images[:, 0].numpy(), arrays["train_images"][27:])
    assert np.array_equal(val.labels.numpy(), arrays["train_labels"][27:])
    assert np.array_equal(test.images[:, 0].numpy(), arrays["t10k_images"])
    assert np.array_equal(test.labels.numpy(), arrays["t10k_labels"])


def test_split_sizes_match_the_official_ones():
    assert vdata.val_count(60_000) == 5000 and vdata.val_count(50_000) == 5000 and vdata.val_count(30) == 3


def test_fashion_mnist_uses_its_folder_and_class_names(tmp_path, monkeypatch):
    arrays = write_mnist(tmp_path, "FashionMNIST", gz=False)
    monkeypatch.setenv("FOVEA_DATA", str(tmp_path))
    test = vdata.load("fashion-mnist", "test")  # data_dir from $FOVEA_DATA
    assert test.classes[:2] == ("T-shirt/top", "Trouser") and test.classes[-1] == "Ankle boot"
    assert np.array_equal(test.labels.numpy(), arrays["t10k_labels"])


def test_default_data_dir_is_dot_data(tmp_path, monkeypatch):
    monkeypatch.delenv("FOVEA_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data", "MNIST", gz=True)
    assert len(vdata.load("mnist", "test")) == 7
    assert vdata.data_root("/x") == Path("/x")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: b"PK\x03\x04" + raw[4:], "is not an IDX file: it starts with 504b0304"),
        (lambda raw: raw[:-5], "is truncated: its header promises (30, 28, 28) uint8 values (23520 bytes)"),
        (lambda raw: raw + b"\0", "is longer than its header says"),
        (lambda raw: raw[:9], "is truncated: it ends inside its header"),
        (lambda raw: gzip.compress(raw)[:-20], "is a damaged gzip file"),
    ],
)
def test_corrupt_idx_files_are_refused_with_their_path(tmp_path, damage, message):
    write_mnist(tmp_path, "MNIST", gz=False)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ConfigError, match="train-images-idx3-ubyte") as e:
        vdata.load("mnist", "train", data_dir=tmp_path)
    assert message in str(e.value)


def test_idx_labels_must_match_the_images(tmp_path):
    write_mnist(tmp_path, "MNIST", gz=False)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(6, np.uint8), gz=False)
    with pytest.raises(ConfigError, match=r"t10k-labels-idx1-ubyte holds uint8 \(6,\): expected 7 uint8 labels"):
        vdata.load("mnist", "test", data_dir=tmp_path)
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", np.zeros((7, 28, 28), ">i4"), gz=False)
    with pytest.raises(ConfigError, match=r"holds int32 \(7, 28, 28\), not uint8 images"):
        vdata.load("mnist", "test", data_dir=tmp_path)


def test_missing_mnist_tries_torchvision_then_names_the_files(tmp_path, no_download):
    with pytest.raises(ConfigError) as e:
        vdata.load("mnist", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert no_download == [("MNIST", str(tmp_path), True)]
    assert "MNIST not found" in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert all(f"{n}[.gz]" in msg for n in MNIST_NAMES)
    assert "downloading it with torchvision failed (RuntimeError: Tried https://..., got URLError)" in msg
    assert "--data-dir" in msg and "FOVEA_DATA" in msg


def test_a_successful_download_is_loaded(tmp_path, monkeypatch):
    import torchvision.datasets

    def fake_mnist(root, train=True, download=False):
        write_mnist(Path(root), "MNIST", gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    assert len(vdata.load("mnist", "val", data_dir=tmp_path)) == 3


# ----------------------------------------------------------------------------- CIFAR-10


def cifar_batches(sizes: list[int]) -> list[tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(3)
    return [(rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()) for n in sizes]


def write_cifar_pickles(root: Path, batches, *, protocol: int = 2, str_keys: bool = False) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, (data, labels) in zip([*vdata.CIFAR_BATCHES["train"], "test_batch"], batches, strict=True):
        batch = {b"batch_label": b"batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * len(data)}
        if str_keys:
            batch = {k.decode(): v for k, v in batch.items()}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


SIZES = [4, 4, 4, 4, 4, 3]  # 20 training images: val = the last 2, all from data_batch_5


@pytest.mark.parametrize("protocol, str_keys", [(2, False), (5, False), (4, True)])
def test_cifar_pickles_load_with_the_planes_in_rgb_order(tmp_path, protocol, str_keys):
    batches = cifar_batches(SIZES)
    write_cifar_pickles(tmp_path, batches, protocol=protocol, str_keys=str_keys)
    train = vdata.load("cifar10", "train", data_dir=tmp_path)
    val = vdata.load("cifar10", "val", data_dir=tmp_path)
    test = vdata.load("cifar10", "test", data_dir=tmp_path)
    assert (len(train), len(val), len(test)) == (18, 2, 3)
    assert train.shape == (3, 32, 32) and train.max_value == 255 and train.classes[0] == "airplane"
    row = batches[0][0][1]  # image 1 of data_batch_1: the R plane, then G, then B, each 32x32 row-major
    image = train.images[1]
    assert image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32] and image[1, 0, 0] == row[1024]
    assert image[2, 31, 31] == row[3071] and image[1, 5, 7] == row[1024 + 5 * 32 + 7]
    assert np.array_equal(val.images.reshape(2, -1).numpy(), batches[4][0][2:])
    assert np.array_equal(val.labels.numpy(), batches[4][1][2:])
    assert np.array_equal(train.labels[4:8].numpy(), batches[1][1])
    assert np.array_equal(test.images.reshape(3, -1).numpy(), batches[5][0])


def test_cifar_binary_batches_load(tmp_path):
    batches = cifar_batches(SIZES)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, (data, labels) in zip([*vdata.CIFAR_BATCHES["train"], "test_batch"], batches, strict=True):
        records = np.concatenate([np.array(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    train = vdata.load("cifar10", "train", data_dir=tmp_path)
    test = vdata.load("cifar10", "test", data_dir=tmp_path)
    assert len(train) == 18 and np.array_equal(test.labels.numpy(), batches[5][1])
    assert train.images[5, 1, 2, 3] == batches[1][0][1][1024 + 2 * 32 + 3]
    (folder / "test_batch.bin").write_bytes(records.tobytes()[:-10])
    with pytest.raises(ConfigError, match="test_batch.bin is truncated .* not a whole number of 3,073-byte records"):
        vdata.load("cifar10", "test", data_dir=tmp_path)


class Evil:
    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("attack", ["system", "open", "eval", "nested"])
def test_a_malicious_cifar_pickle_is_refused_before_it_runs(tmp_path, attack):
    import builtins

    marker = tmp_path / "pwned"
    write_cifar_pickles(tmp_path, cifar_batches(SIZES))
    call, args = {
        "system": (os.system, (f"touch {marker}",)),
        "open": (builtins.open, (str(marker), "w")),
        "eval": (builtins.eval, (f"open({str(marker)!r}, 'w')",)),
        "nested": (os.system, (f"touch {marker}",)),
    }[attack]
    payload = Evil(call, *args)
    if attack == "nested":  # a valid-looking batch with the payload among its labels
        payload = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload]}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ConfigError, match="data_batch_3 is not a CIFAR-10 batch: it asks to load") as e:
        vdata.load("cifar10", "train", data_dir=tmp_path)
    modules = {call.__module__, "__builtin__"}  # protocol 2 names builtins by their Python 2 module
    assert any(f"it asks to load {m}.{call.__name__}," in str(e.value) for m in modules), str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "is float32 (2, 3072)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "are not 2 integers"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "holds label 10"),
        (b"\x80\x02}q\x00(", "unpickling failed"),
    ],
)
def test_a_foreign_cifar_file_is_refused(tmp_path, content, message):
    write_cifar_pickles(tmp_path, cifar_batches(SIZES))
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(content)
    with pytest.raises(ConfigError, match="test_batch") as e:
        vdata.load("cifar10", "test", data_dir=tmp_path)
    assert message in str(e.value)


def test_missing_cifar_names_the_batches(tmp_path, no_download):
    with pytest.raises(ConfigError) as e:
        vdata.load("cifar10", "test", data_dir=tmp_path)
    msg = str(e.value)
    assert no_download == [("CIFAR10", str(tmp_path), True)]
    assert f"in {tmp_path / 'cifar-10-batches-py'};" in msg and "data_batch_1, " in msg and "test_batch" in msg
    assert "download" in msg and "--data-dir" in msg


# ----------------------------------------------------------------------------- folder:PATH


def write_image(path: Path, pixels: np.ndarray, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def test_an_image_folder_splits_each_class_by_position(tmp_path):
    for c, cls in enumerate(["cat", "dog"]):
        for i in range(12):
            write_image(tmp_path / cls / f"{i:02d}.png", np.full((5, 6), 20 * c + i, np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    name = f"folder:{tmp_path}"
    vdata.check_name(name)
    train, val, test = (vdata.load(name, s) for s in vdata.SPLITS)
    assert (len(train), len(val), len(test)) == (16, 4, 4)
    assert train.shape == (1, 5, 6) and train.classes == ("cat", "dog") and train.max_value == 255
    assert val.images[:, 0, 0, 0].tolist() == [0, 10, 20, 30] and val.labels.tolist() == [0, 0, 1, 1]
    assert test.images[:, 0, 0, 0].tolist() == [1, 11, 21, 31]
    assert train.images[:, 0, 2, 3].tolist() == [*range(2, 10), *range(22, 30)]
    assert train.labels.tolist() == [0] * 8 + [1] * 8


def test_an_image_folder_with_split_subfolders_in_colour(tmp_path):
    red, blue = np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 100
    write_image(tmp_path / "train" / "red" / "a.png", red)
    write_image(tmp_path / "train" / "blue" / "a.jpg", blue, "PNG")
    write_image(tmp_path / "val" / "red" / "b.bmp", red)
    write_image(tmp_path / "test" / "blue" / "c.png", np.full((4, 4), 7, np.uint8))  # a grey one among colour
    train = vdata.load(f"folder:{tmp_path}", "train")
    assert train.classes == ("blue", "red") and train.labels.tolist() == [0, 1] and train.shape == (3, 4, 4)
    assert train.images[0, :, 1, 1].tolist() == [0, 0, 100] and train.images[1, :, 1, 1].tolist() == [200, 0, 0]
    assert vdata.load(f"folder:{tmp_path}", "val").labels.tolist() == [1]
    assert vdata.load(f"folder:{tmp_path}", "test").images[0, :, 0, 0].tolist() == [7, 7, 7]
    (tmp_path / "test" / "blue" / "c.png").unlink()
    with pytest.raises(ConfigError, match=f"leaves the test split empty: {tmp_path / 'test'} holds no images"):
        vdata.load(f"folder:{tmp_path}", "test")


def test_an_image_folder_of_mixed_sizes_is_refused(tmp_path):
    write_image(tmp_path / "a" / "small.png", np.zeros((4, 4), np.uint8))
    write_image(tmp_path / "a" / "wide.png", np.zeros((4, 9), np.uint8))
    write_image(tmp_path / "b" / "same.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ConfigError, match="differ in size") as e:
        vdata.load(f"folder:{tmp_path}", "val")
    msg = str(e.value)
    assert f"4x4: {tmp_path / 'a' / 'small.png'}" in msg and f"9x4: {tmp_path / 'a' / 'wide.png'}" in msg
    assert "resize them" in msg


def test_bad_image_folders_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=f"dataset folder {tmp_path / 'nope'} does not exist"):
        vdata.load(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match=f"dataset folder {tmp_path / 'empty'} holds no images"):
        vdata.load(f"folder:{tmp_path / 'empty'}", "train")
    write_image(tmp_path / "few" / "a" / "1.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ConfigError, match="leaves the test split empty.*at least 3 images"):
        vdata.load(f"folder:{tmp_path / 'few'}", "test")
    write_image(tmp_path / "bad" / "a" / "1.png", np.zeros((3, 3), np.uint8))
    (tmp_path / "bad" / "a" / "2.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=f"cannot read image {tmp_path / 'bad' / 'a' / '2.png'}"):
        vdata.load(f"folder:{tmp_path / 'bad'}", "train")
    good = (tmp_path / "bad" / "a" / "1.png").read_bytes()
    (tmp_path / "bad" / "a" / "2.png").write_bytes(good[: len(good) // 2])  # truncated: the header still reads
    with pytest.raises(ConfigError, match="cannot read image .*2.png"):
        vdata.load(f"folder:{tmp_path / 'bad'}", "val")


# ----------------------------------------------------------------------------- names


def test_check_name_accepts_parameterised_names_and_refuses_the_rest():
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "atari:pong", "atari:Pong:rgb", "folder:/x/y"):
        vdata.check_name(name)
    assert {"mnist", "cifar10", "atari:GAME[:rgb]", "folder:PATH"} <= set(vdata.datasets())
    with pytest.raises(ConfigError, match="unknown dataset 'mnits'; did you mean mnist"):
        vdata.check_name("mnits")
    with pytest.raises(ConfigError, match="unknown Atari game 'pongg'; did you mean pong"):
        vdata.check_name("atari:pongg")
    with pytest.raises(ConfigError, match="'atari:pong:grey' is not of the form atari:GAME or atari:GAME:rgb"):
        vdata.check_name("atari:pong:grey")
    with pytest.raises(ConfigError, match="is not of the form atari:GAME"):
        vdata.check_name("atari")
    with pytest.raises(ConfigError, match="'folder:' needs a path: folder:PATH"):
        vdata.check_name("folder:")
    with pytest.raises(ConfigError, match="unknown split 'training'"):
        vdata.load("digits", "training")
    assert vdata.atari_game("SpaceInvaders") == vdata.atari_game("space-invaders") == "space_invaders"


def test_digits_is_unchanged():
    train = vdata.load("digits", "train")
    assert len(train) == 1000 and train.shape == (1, 8, 8) and train.max_value == 16
    assert len(vdata.load("digits", "test")) == 447


# ----------------------------------------------------------------------------- atari:GAME[:rgb]


@pytest.fixture
def tiny_atari(monkeypatch):
    monkeypatch.setitem(vdata.ATARI_FRAMES, "train", 6)
    monkeypatch.setitem(vdata.ATARI_FRAMES, "val", 3)
    monkeypatch.setitem(vdata.ATARI_FRAMES, "test", 2)


def test_atari_frames_are_cached_and_a_corrupt_cache_is_rebuilt(tmp_path, tiny_atari, monkeypatch):
    train = vdata.load("atari:pong", "train", cache_dir=tmp_path)
    assert train.images.shape == (6, 1, 84, 84) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0] * 6 and train.classes == ("frame",) and train.max_value == 255
    assert len(torch.unique(train.images.reshape(6, -1), dim=0)) > 1  # the game moves
    cache = tmp_path / "atari-pong.npz"
    assert cache.is_file() and [p.name for p in tmp_path.iterdir()] == ["atari-pong.npz"]

    real = data_atari.collect_atari
    monkeypatch.setattr(data_atari, "collect_atari", lambda *a: pytest.fail("the cache was not used"))
    assert torch.equal(vdata.load("atari:pong", "train", cache_dir=tmp_path).images, train.images)
    val = vdata.load("atari:pong", "val", cache_dir=tmp_path)
    assert val.images.shape == (3, 1, 84, 84) and not torch.equal(val.images, train.images[:3])

    monkeypatch.setattr(data_atari, "collect_atari", real)
    cache.write_bytes(b"PK\x03\x04 garbage")
    with pytest.warns(UserWarning, match="atari-pong.npz is unusable .*collecting the frames again"):
        again = vdata.load("atari:pong", "train", cache_dir=tmp_path)
    assert torch.equal(again.images, train.images)  # seeded: the same frames
    with np.load(cache) as z:
        assert z["val"].shape == (3, 1, 84, 84)


def test_atari_rgb_frames_without_a_cache(tmp_path, tiny_atari, monkeypatch):
    monkeypatch.chdir(tmp_path)
    test = vdata.load("atari:pong:rgb", "test")
    assert test.images.shape == (2, 3, 64, 64) and test.images.dtype == torch.uint8
    assert test.images.float().std() > 0 and list(tmp_path.iterdir()) == []

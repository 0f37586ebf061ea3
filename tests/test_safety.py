"""Safety (issue 8): no code runs from a loaded file, secrets from the environment reach no file, and data folders
and images are only read."""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_datasets import SIZES, cifar_batches, write_cifar_pickles

from fovea.cli import main

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "backbones", "envs", "fovea", "generative", "vision", "benchmarks")


def calls(path: Path):
    """(dotted name, keyword names, line) of every call in a source file."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # x().eval() is no builtin eval
            yield ".".join(reversed(parts)), {k.arg: k.value for k in node.keywords}, node.lineno


UNSAFE = ("pickle.load", "pickle.loads", "yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec",
          "marshal.loads", "dill.load", "dill.loads")  # fmt: skip


def unsafe(name: str, kw: dict) -> bool:
    def true(key: str) -> bool:
        return isinstance(kw.get(key), ast.Constant) and bool(kw[key].value)

    return (name == "torch.load" and not true("weights_only")) or name in UNSAFE or (
        name in ("np.load", "numpy.load") and true("allow_pickle")
    )


def test_no_loader_in_the_code_can_run_code_from_a_file():
    """torch.load only with weights_only=True (there is none today), no pickle.load(s) but CIFAR-10's restricted
    unpickler, no yaml.load, no np.load with pickles, no eval / exec."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            found += [f"{path.relative_to(REPO)}:{line} {name}" for name, kw, line in calls(path) if unsafe(name, kw)]
    assert not found, found
    source = (REPO / "vision/data_cifar.py").read_text()
    assert "class _CifarUnpickler(pickle.Unpickler)" in source and "def find_class" in source


SECRETS = {"WANDB_API_KEY": "wandb-secret-5b1f0c2e9d7a4c3b8e6f1a2d", "AWS_SECRET_ACCESS_KEY": "aws-secret-9c8b7a6f5e4d",
           "HF_TOKEN": "hf-token-1234abcd5678efgh", "GITHUB_TOKEN": "ghp-secret-0a1b2c3d4e5f",
           "FOVEA_TEST_PASSWORD": "pw-never-written-42"}  # fmt: skip


def test_secrets_in_the_environment_reach_no_file_and_no_output(in_tmp, capsys, monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "cnn-digits", "--name", "s", "--epochs", "2", "--backbone.widths", "8,16",
                 "--wandb", "offline"]) == 0  # fmt: skip
    assert main(["eval", "runs/s", "--wandb", "offline"]) == 0
    assert main(["sweep", "cnn-digits", "--param", "lr=log:1e-4:1e-2", "-o", "sweep.yaml"]) == 0
    out, err = capsys.readouterr()
    files = [p for p in in_tmp.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and len(files) > 10
    for value in SECRETS.values():
        assert value not in out + err
        for p in files:
            assert value.encode() not in p.read_bytes(), f"{value} leaked into {p.relative_to(in_tmp)}"


def tree(folder: Path) -> dict[str, tuple[str, float]]:
    """Every file and folder under ``folder``: a hash of each file's bytes and its modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                         p.stat().st_mtime) for p in sorted(folder.rglob("*"))}  # fmt: skip


@pytest.mark.slow
def test_data_folders_and_images_are_only_read(in_tmp):
    data = in_tmp / "data"
    write_cifar_pickles(data, cifar_batches(SIZES))
    images = in_tmp / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)).save(images / f"{i}.png")
    before_data, before_images = tree(data), tree(images)
    os.chmod(data, 0o555)  # and were it writable, nothing would be written there either
    try:
        assert main(["train", "softmax-cifar10", "--name", "c", "--data-dir", str(data), "--epochs", "1",
                     "--wandb", "disabled"]) == 0  # fmt: skip
    finally:
        os.chmod(data, 0o755)
    assert main(["train", "detect-digits", "--name", "d", "--epochs", "1", "--train-images", "32", "--eval-images",
                 "8", "--backbone.widths", "8,16,16", "--wandb", "disabled"]) == 0  # fmt: skip
    assert main(["detect", "runs/d", *map(str, sorted(images.iterdir())), "-o", "out", "--wandb", "disabled"]) == 0
    assert tree(data) == before_data and tree(images) == before_images
    assert len(list((in_tmp / "out").glob("*.png"))) == 2

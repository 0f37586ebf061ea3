"""Checkpoints: exact round trip, atomic writes, and refusal of anything that is not one (never unpickle)."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fovea import checkpoint
from fovea.backbones.transfer import load_weights
from fovea.errors import CheckpointError
from fovea.run import rng_state, set_rng_state


def trained_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 4)).square().mean().backward()
    opt.step()
    return model, opt


def test_round_trip_is_exact(tmp_path):
    model, opt = trained_state()
    gen = torch.Generator().manual_seed(3)
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "gen": gen.get_state(),
        "rng": rng_state(),
        "array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "misc": (1, 2.5, "x", None, [True, 2**70]),
    }
    checkpoint.save(tmp_path / "step_000000001", state, meta={"model": "toy"})
    back, meta = checkpoint.load(tmp_path / "step_000000001", expect={"model": "toy"})
    assert meta == {"model": "toy"}
    for k, v in state["model"].items():
        assert torch.equal(back["model"][k], v) and back["model"][k].dtype == v.dtype
    assert back["opt"]["param_groups"] == state["opt"]["param_groups"]
    for i, s in state["opt"]["state"].items():  # int keys survive
        for k, v in s.items():
            assert torch.equal(back["opt"]["state"][i][k], v)
    assert torch.equal(back["gen"], state["gen"])
    np.testing.assert_array_equal(back["array"], state["array"])
    assert back["misc"] == state["misc"]
    # the RNG states restore: the same draws follow
    set_rng_state(back["rng"])
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state["rng"])
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())
    # and the optimizer accepts its state back
    model2, opt2 = trained_state()
    opt2.load_state_dict(back["opt"])


class WritesAFile:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


def test_pickle_payload_is_refused_and_runs_nothing(tmp_path):
    target = tmp_path / "pwned"
    payload = pickle.dumps(WritesAFile(target))
    # as the tensor file of a checkpoint folder
    ck = tmp_path / "step_000000001"
    checkpoint.save(ck, {"w": torch.ones(2)})
    (ck / checkpoint.TENSORS).write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle") as err:
        checkpoint.load(ck)
    assert str(ck) in str(err.value)
    # as a torch.save file and as a renamed file handed to transfer learning
    torch.save({"x": WritesAFile(target)}, tmp_path / "weights.pt")
    (tmp_path / "weights.safetensors").write_bytes(payload)
    for bad in (tmp_path / "weights.pt", tmp_path / "weights.safetensors"):
        with pytest.raises(CheckpointError, match=str(bad.name)):
            load_weights(torch.nn.Linear(2, 2), bad)
    assert not target.exists()


def test_truncated_and_corrupt_files_are_refused_with_the_path(tmp_path):
    ck = checkpoint.save(tmp_path / "step_000000001", {"w": torch.ones(1000)})
    data = (ck / checkpoint.TENSORS).read_bytes()
    (ck / checkpoint.TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="step_000000001"):
        checkpoint.load(ck)
    ck2 = checkpoint.save(tmp_path / "step_000000002", {"w": torch.ones(3)})
    (ck2 / checkpoint.STATE).write_text('{"format": "fovea-checkpoint/1", "state": {"w": {"__tens')
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(ck2)
    with pytest.raises(CheckpointError, match="not a Fovea checkpoint"):
        checkpoint.load(tmp_path / "nowhere")


def test_another_models_checkpoint_is_refused(tmp_path):
    ck = checkpoint.save(tmp_path / "step_000000001", {"w": torch.ones(1)}, meta={"config_class": "GANConfig"})
    with pytest.raises(CheckpointError, match="GANConfig"):
        checkpoint.load(ck, expect={"config_class": "ClassifierConfig"})


def test_interrupted_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    checkpoint.save(folder / "step_000000001", {"w": torch.zeros(3)})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", crash)  # the process dies before the rename
    with pytest.raises(OSError):
        checkpoint.save(folder / "step_000000002", {"w": torch.ones(3)})
    monkeypatch.undo()
    # a kill -9 mid-write leaves a temporary folder behind: it is never taken for a checkpoint
    stale = folder / ".tmp-step_000000003-99999"
    stale.mkdir()
    (stale / checkpoint.STATE).write_text("{")
    found = checkpoint.list_checkpoints(folder)
    assert [p.name for p in found] == ["step_000000001"]
    state, _ = checkpoint.load(found[-1])
    assert torch.equal(state["w"], torch.zeros(3))
    checkpoint.prune(folder, keep_last=3)
    assert not stale.exists()


def test_replacing_a_checkpoint_in_place_is_atomic(tmp_path, monkeypatch):
    ck = checkpoint.save(tmp_path / "step_000000001", {"w": torch.zeros(2)})
    real_rename, calls = os.rename, []

    def rename_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old one moved aside, new one not yet in place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(ck, {"w": torch.ones(2)})
    monkeypatch.undo()
    # the old checkpoint was moved aside, not lost: listing puts it back in place
    assert not ck.exists()
    assert checkpoint.list_checkpoints(tmp_path) == [ck]
    state, _ = checkpoint.load(ck)
    assert torch.equal(state["w"], torch.zeros(2))


def test_prune_keeps_the_newest(tmp_path):
    for s in range(1, 6):
        checkpoint.save(tmp_path / f"step_{s:09d}", {"s": torch.tensor(s)})
    checkpoint.prune(tmp_path, keep_last=2)
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [4, 5]


def test_a_kill_during_pruning_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """Pruning renames a checkpoint aside before deleting it: a kill -9 mid-deletion (seen in the SIGKILL trials as
    a step folder holding state.json without its tensors) leaves a .del- folder, never taken for a checkpoint and
    swept by the next prune; a step folder missing either file is not listed either."""
    for s in range(1, 4):
        checkpoint.save(tmp_path / f"step_{s:09d}", {"s": torch.tensor(s)})

    def die_midway(path, ignore_errors=False):
        (Path(path) / checkpoint.TENSORS).unlink()  # the tensors deleted, then the process is killed
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", die_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune(tmp_path, keep_last=2)
    monkeypatch.undo()
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [2, 3]
    assert not (tmp_path / "step_000000001").exists() and list(tmp_path.glob(".del-step_000000001-*"))
    half = tmp_path / "step_000000009"  # as an older Fovea could leave it
    half.mkdir()
    (half / checkpoint.STATE).write_text("{}")
    assert [checkpoint.step_of(p) for p in checkpoint.list_checkpoints(tmp_path)] == [2, 3]
    monkeypatch.setattr(checkpoint.os, "getpid", lambda: 1)  # the next run's process
    checkpoint.prune(tmp_path, keep_last=2)
    assert not list(tmp_path.glob(".del-*"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tensors=st.binary(max_size=300),
    state=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["__tensor__", "__items__", "__tuple__", "numpy", "a"]), inner, max_size=3
                )
            ),
            max_leaves=8,
        ).map(lambda s: json.dumps({"format": checkpoint.FORMAT, "meta": {}, "state": s}).encode()),
    ),
)
def test_random_bytes_as_a_checkpoint_give_a_clean_error(tmp_path, tensors, state):
    ck = checkpoint.save(tmp_path / "step_000000001", {"w": torch.ones(2)})
    if tensors:
        (ck / checkpoint.TENSORS).write_bytes(tensors)
    (ck / checkpoint.STATE).write_bytes(state)
    try:
        checkpoint.load(ck)
    except CheckpointError as e:
        assert str(ck) in str(e)

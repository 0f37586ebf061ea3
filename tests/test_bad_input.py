"""Bad input (issue 8), from the command line: each mistake gets one clear line that names the problem and the fix,
exit code 2, no traceback, and leaves nothing behind (no half-made run folder, and a run it was pointed at is
unchanged). ``-s`` prints how many were tried."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fovea.cli import main

# (argv, a piece of the message); RUN/... names a run the fixture trained, DATA an empty data folder
CASES = [
    (["train", "cnn-digit"], "did you mean cnn-digits"),
    (["train", "cnn-digits", "--lrr", "1"], "did you mean --lr"),
    (["train", "dqn-catch", "--env", "cartpol"], "did you mean cartpole"),
    (["train", "dqn-pong", "--env", "pongg"], "did you mean pong"),
    (["train", "cnn-digits", "--dataset", "digitz"], "did you mean digits"),
    (["train", "detect-digits", "--dataset", "digits-detekt"], "digits-detect"),
    (["train", "cnn-digits", "--backbone", "resnt"], "did you mean resnet"),
    (["train", "cnn-digits", "--optimizer", "adamm"], "did you mean adam"),
    (["train", "cnn-digits", "--epochs", "-3"], "must be >= 1"),
    (["train", "cnn-digits", "--batch-size", "0"], "must be >= 1"),
    (["train", "a2c-cartpole", "--num-envs", "0"], "must be >= 1"),
    (["train", "detect-digits", "--size", "8"], "must be >= 16"),
    (["train", "cnn-digits", "--epochs", "three"], "expected an integer"),
    (["train", "cnn-digits", "--lr", "fast"], "--lr"),
    (["train", "cnn-digits", "--compile", "maybe"], "expected true or false"),
    (["train", "cnn-digits", "--amp", "fp8"], "did you mean fp16"),
    (["train", "cnn-digits", "--backbone.widths", "8,x"], "expected an integer"),
    (["train", "cnn-digits", "--augment", "spin:3"], "spin:3"),
    (["train", "dqn-cartpole", "--batch-size", "5000", "--buffer-size", "1000"], "larger than buffer_size"),
    (["train", "cnn-digits", "--name", "../../x"], "not a valid run name"),
    (["train", "cnn-digits", "--name", "/tmp/x"], "not a valid run name"),
    (["train", "cnn-digits", "--keep-checkpoints", "0"], "at least 1"),
    (["train", "cnn-digits", "--device", "cuda:7"], "--device cuda:7"),
    (["train", "cnn-digits", "--wandb", "sometimes"], "invalid choice: 'sometimes'"),
    (["nonsense"], "invalid choice: 'nonsense'"),
    (["eval"], "required: run_dir"),
    (["train"], "name a recipe"),
    (["train", "cnn-mnist", "--data-dir", "DATA"], "MNIST not found"),
    (["train", "cnn-cifar10", "--data-dir", "DATA"], "CIFAR-10 not found"),
    (["train", "cnn-digits", "--backbone-from", "runs/missing"], "not a Fovea checkpoint"),
    (["train", "cnn-digits", "--backbone-from", "RUN/vae"], "holds no weights that fit"),
    (["train", "--resume", "runs/missing"], "not a run folder"),
    (["eval", "runs/missing"], "not a run folder"),
    (["train", "--resume", "RUN/corrupt", "--epochs", "2"], "not a safetensors file"),
    (["eval", "RUN/truncated"], "corrupt or truncated"),
    (["eval", "RUN/foreign"], "belongs to config_class='VAEConfig'"),
    (["train", "--resume", "RUN/foreign", "--epochs", "2"], "belongs to config_class='VAEConfig'"),
    (["eval", "RUN/bad-config"], "config.json is corrupt"),
    (["sample", "RUN/cnn"], "not a generative model"),
    (["explain", "RUN/vae", "--what", "saliency"], "nothing to explain"),
    (["detect", "RUN/cnn", "x.png"], "not a detector"),
    (["sweep", "cnn-digits", "--param", "lr=log:1e-4:1e-2", "--method", "annealing"], "not a sweep method"),
    (["search", "cnn-digits", "--param", "lr=log:1e-1:1e-4"], "needs LO < HI"),
]


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny classifier and VAE, and broken copies of the classifier: a corrupt, a truncated and a foreign
    checkpoint, and a corrupt config.json."""
    root = tmp_path_factory.mktemp("bad")
    base = ["--runs-dir", str(root), "--epochs", "1", "--wandb", "disabled"]
    assert main(["train", "cnn-digits", "--name", "cnn", "--backbone.widths", "8,16", *base]) == 0
    assert main(["train", "vae-digits", "--name", "vae", "--iwae-samples", "4", *base]) == 0
    for name in ("corrupt", "truncated", "foreign", "bad-config"):
        shutil.copytree(root / "cnn", root / name)
    (ckpt,) = (root / "corrupt/checkpoints").iterdir()
    (ckpt / "tensors.safetensors").write_bytes(b"\x07" * 1000)
    (ckpt,) = (root / "truncated/checkpoints").iterdir()
    with open(ckpt / "tensors.safetensors", "r+b") as f:
        f.truncate(100)
    shutil.rmtree(root / "foreign/checkpoints")
    shutil.copytree(root / "vae/checkpoints", root / "foreign/checkpoints")
    (root / "bad-config/config.json").write_text("{not json")
    return root


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_a_mistake_gets_one_clear_line_and_changes_nothing(argv, message, runs, in_tmp, capsys):
    (in_tmp / "DATA").mkdir()
    argv = [str(runs / a[4:]) if a.startswith("RUN/") else str(in_tmp / "DATA") if a == "DATA" else a for a in argv]
    before = tree(runs)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert message in err, err
    assert tree(runs) == before  # a run it was pointed at is as it was
    made = in_tmp / "runs"
    assert not made.exists() or not any(made.iterdir()), list(made.iterdir())  # nothing half-made


def test_the_table_covers_every_kind_of_mistake_the_issue_names():
    text = " ".join(" ".join(a) + " " + m for a, m in CASES)
    for kind in ("recipe", "--lrr", "--env", "--dataset", "--backbone", "--optimizer", ">= 1", "expected an integer",
                 "buffer_size", "run name", "not found", "safetensors", "truncated", "VAEConfig", "config.json"):
        assert kind in text, kind
    print(f"{len(CASES)} bad inputs, each answered with one clear line")


# ----------------------------------------------------------------------------- random run folders (hypothesis)

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)  # fmt: skip
FIELDS = ["epochs", "lr", "batch_size", "backbone", "dataset", "augment", "seed", "optimizer", "dropout", "nonsense"]
configs = st.fixed_dictionaries(
    {"recipe": st.sampled_from(["cnn-digits", "vae-digits", "dqn-catch", "no-such-recipe"]) | json_values},
    optional={"config": st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4) | json_values,
              "wandb_id": json_values, "config_class": json_values},
).map(lambda d: json.dumps(d).encode())  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=200) | configs)
def test_random_bytes_as_a_run_s_config_get_a_clean_error(content):
    """A run folder whose config.json holds anything at all: ``fovea eval`` and ``fovea sample`` answer with one
    clear error line (there is no checkpoint to act on), never a traceback, and leave the folder as it was. (A
    --resume of a valid config with no checkpoint starts the run over, by design: it was killed before its first.)"""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "runs" / "r"
        run.mkdir(parents=True)
        (run / "config.json").write_bytes(content)
        for argv in (["eval", str(run), "--wandb", "disabled"], ["sample", str(run), "--wandb", "disabled"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(argv)
            assert code == 2, (argv, content, err.getvalue())
            assert "Traceback" not in err.getvalue()
            assert [line for line in err.getvalue().splitlines() if line.startswith("error:")], err.getvalue()
            assert sorted(p.name for p in run.iterdir()) == ["config.json"], content
            assert (run / "config.json").read_bytes() == content

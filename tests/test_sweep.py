"""`fovea sweep`: the W&B sweep configuration it writes, its errors, and one trial run the way `wandb agent` runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb_reader import records

from fovea.cli import load_tasks, main
from fovea.config import get_recipe
from fovea.run import Run
from fovea.sweep import default_metric

REPO = Path(__file__).resolve().parents[1]
COMMAND = ["${env}", "${interpreter}", "-m", "fovea", "train"]


def sweep(capsys, *argv: str) -> tuple[dict, dict]:
    """Run `fovea sweep ARGV`; the written configuration (YAML as `wandb sweep` reads it) and the JSON last line."""
    assert main(["sweep", *argv]) == 0
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    text = Path(last["sweep_config"]).read_text()
    assert text.startswith("# Written by `fovea sweep`")
    return yaml.safe_load(text), last


def test_random_sweep_maps_every_range_to_its_wandb_distribution(in_tmp, capsys):
    cfg, last = sweep(capsys, "cnn-digits", "--param", "lr=log:1e-5:1e-3", "--param", "batch_size=logint:16:256",
                      "--param", "dropout=uniform:0:0.5", "--param", "epochs=int:1:3", "--param",
                      "optimizer=choice:sgd|adam", "--param", "backbone.widths=choice:8,16|16,32",
                      "--weight-decay", "0", "--project", "p1")  # fmt: skip
    assert cfg["method"] == "random" and cfg["project"] == "p1" and cfg["program"]
    assert cfg["metric"] == {"name": "val/acc", "goal": "maximize"}
    assert cfg["parameters"] == {
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-3},
        "batch_size": {"distribution": "q_log_uniform_values", "min": 16, "max": 256, "q": 1},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "epochs": {"distribution": "int_uniform", "min": 1, "max": 3},
        "optimizer": {"values": ["sgd", "adam"]},
        "backbone.widths": {"values": ["8,16", "16,32"]},
    }
    # the agent runs the same fovea as the user's, with the fixed overrides, then the sampled --field=value
    assert cfg["command"] == [*COMMAND, "cnn-digits", "--weight-decay", "0", "${args}"]
    assert last["next"] == ["wandb sweep sweep.yaml", "wandb agent ENTITY/p1/SWEEP_ID"]


def test_grid_sweep_lists_values_and_bayes_optimises_the_metric(in_tmp, capsys):
    cfg, _ = sweep(capsys, "cnn-digits", "--param", "lr=choice:1e-3|3e-3", "--param", "epochs=int:1:3",
                   "--method", "grid", "-o", "grid.yaml", "--device", "cpu")  # fmt: skip
    assert cfg["method"] == "grid"
    assert cfg["parameters"] == {"lr": {"values": [0.001, 0.003]}, "epochs": {"values": [1, 2, 3]}}
    assert cfg["command"] == [*COMMAND, "cnn-digits", "--device", "cpu", "${args}"]
    cfg, _ = sweep(capsys, "vae-digits", "--param", "lr=log:1e-4:1e-2", "--method", "bayes", "-o", "bayes.yaml")
    assert cfg["method"] == "bayes" and cfg["metric"] == {"name": "val/loss", "goal": "minimize"}
    cfg, _ = sweep(capsys, "dqn-catch", "--param", "lr=log:1e-4:1e-2", "--method", "bayes", "--metric",
                   "eval/best_mean_return", "-o", "b2.yaml")  # fmt: skip
    assert cfg["metric"] == {"name": "eval/best_mean_return", "goal": "maximize"}
    cfg, _ = sweep(capsys, "cnn-digits", "--param", "lr=log:1e-4:1e-2", "--metric", "val/acc", "--goal", "minimize",
                   "-o", "b3.yaml", "--name", "odd")  # fmt: skip
    assert cfg["metric"] == {"name": "val/acc", "goal": "minimize"} and cfg["name"] == "odd"


@pytest.mark.parametrize(("recipe", "metric"), [
    ("cnn-digits", "val/acc"), ("softmax-digits", "val/acc"), ("knn-digits", "val/acc"), ("detect-digits", "val/map"),
    ("vae-digits", "val/loss"), ("pixelcnn-digits", "val/loss"), ("gan-digits", None),
    ("dqn-catch", "eval/mean_return"), ("a2c-catch", "eval/mean_return"), ("reinforce-catch", "eval/mean_return"),
])  # fmt: skip
def test_default_metric_is_a_figure_the_recipes_train_reports(recipe, metric):
    load_tasks()
    assert default_metric(get_recipe(recipe).config) == metric


@pytest.mark.parametrize(("argv", "message"), [
    (["nope", "--param", "lr=log:1e-5:1e-3"], "unknown recipe 'nope'"),
    (["cnn-digits", "--param", "lrr=log:1e-5:1e-3"], "--param lrr: unknown option --lrr; did you mean --lr?"),
    (["cnn-digits", "--param", "lr=log1e-5"], "is not a search range"),
    (["cnn-digits", "--param", "lr=uniform:-1:1"], "lr = -1.0 is not allowed: it must be > 0"),
    (["cnn-digits", "--param", "batch_size=uniform:16:64"], "an integer field takes int:LO:HI or logint:LO:HI"),
    (["cnn-digits", "--param", "backbone.depth=int:1:3"], "backbone 'convnet' has no option 'depth'"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--method", "grid"],
     "--method grid tries every combination of listed values, but --param lr=log:1e-05:0.001 is a range"),
    (["cnn-digits", "--param", "epochs=int:1:1000", "--method", "grid"], "a grid would try all 1000 integers"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--method", "hyperband"], "--method 'hyperband' is not a sweep"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--goal", "up"], "--goal 'up': use maximize or minimize"),
    (["gan-digits", "--param", "lr_d=log:1e-5:1e-3", "--method", "bayes"], "name one of the figures"),
    (["gan-digits", "--param", "lr_d=log:1e-5:1e-3", "--goal", "minimize"], "--goal minimize needs a --metric"),
    (["cnn-digits"], "give at least one --param"),
    (["--param", "lr=log:1e-5:1e-3"], "name a recipe to sweep"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--lr", "0.1"], "--lr is both fixed and swept"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--param", "lr=log:1e-4:1e-3"], "given more than once"),
    (["cnn-digits", "--param", "lr=log:1e-5:1e-3", "--epochss", "3"], "unknown option --epochss"),
])  # fmt: skip
def test_bad_input_gets_one_line_and_writes_nothing(argv, message, in_tmp, capsys):
    assert main(["sweep", *argv]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()), err
    assert "Traceback" not in err
    assert not list(in_tmp.iterdir())


def test_a_file_fovea_did_not_write_is_not_overwritten(in_tmp, capsys):
    Path("sweep.yaml").write_text("mine: 1\n")
    assert main(["sweep", "cnn-digits", "--param", "lr=log:1e-5:1e-3"]) == 2
    assert "sweep.yaml exists and was not written by fovea sweep" in capsys.readouterr().err
    assert Path("sweep.yaml").read_text() == "mine: 1\n"
    sweep(capsys, "cnn-digits", "--param", "lr=log:1e-5:1e-3", "-o", "s.yaml")
    sweep(capsys, "cnn-digits", "--param", "lr=log:1e-4:1e-3", "-o", "s.yaml")  # its own file: written again


def test_under_a_sweep_agent_the_run_is_the_trial(in_tmp, monkeypatch):
    load_tasks()
    cfg = get_recipe("softmax-digits").config

    def start(**kw) -> Run:
        with Run.create("softmax-digits", cfg, wandb="disabled", **kw) as run:
            return run

    run = start()
    assert run.name.startswith("softmax-digits-2") and run.meta["wandb_id"] != "trial123"
    monkeypatch.setenv("WANDB_RUN_ID", "trial123")
    assert start().name.startswith("softmax-digits-2")  # no sweep: named and tracked as before
    monkeypatch.setenv("WANDB_SWEEP_ID", "sw1")
    run = start()
    assert (run.name, run.meta["wandb_id"], run.meta["wandb_sweep"]) == ("softmax-digits-trial123", "trial123", "sw1")
    assert json.loads((run.dir / "config.json").read_text())["wandb_id"] == "trial123"
    named = start(name="mine")
    assert named.dir == Path("runs/mine") and named.meta["wandb_id"] == "trial123"


def _summary(wandb_file: Path) -> dict:
    """The W&B summary of an offline run file (the last value of each key)."""
    from wandb.proto import wandb_internal_pb2

    summary, run = {}, None
    for data in records(wandb_file):
        r = wandb_internal_pb2.Record()
        r.ParseFromString(data)
        kind = r.WhichOneof("record_type")
        if kind == "summary":
            summary.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "run":
            run = r.run
    return {"summary": summary, "run_id": run.run_id, "sweep_id": run.sweep_id}


@pytest.mark.slow  # 8 s: a trial as a subprocess, the way wandb's agent starts it
def test_one_trial_runs_the_way_wandb_agent_runs_it(in_tmp, capsys):
    cfg, _ = sweep(capsys, "softmax-digits", "--param", "lr=log:1e-5:1e-3", "--param", "batch_size=choice:32|64",
                   "--method", "bayes", "--epochs", "1")  # fmt: skip
    # what the agent does (wandb_agent.Agent._command_run): the controller's values, written to the param file and
    # passed as --field=value; ${env} is /usr/bin/env and ${interpreter} `python` from the agent's PATH (here the
    # interpreter running the tests, so the command runs this fovea)
    values = {"lr": 0.00042, "batch_size": 64}
    param_file = in_tmp / "wandb" / "sweep-sw1" / "config-trial123.yaml"
    param_file.parent.mkdir(parents=True)
    param_file.write_text(yaml.safe_dump({"wandb_version": 1, **{k: {"value": v} for k, v in values.items()}}))
    macros = {"${env}": ["/usr/bin/env"] if Path("/usr/bin/env").exists() else [], "${interpreter}": [sys.executable],
              "${program}": [cfg["program"]], "${args}": [f"--{k}={v}" for k, v in values.items()]}  # fmt: skip
    command = [word for c in cfg["command"] for word in macros.get(c, [c])]
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SWEEP_ID": "sw1",
           "WANDB_RUN_ID": "trial123", "WANDB_PROJECT": "fovea", "WANDB_SWEEP_PARAM_PATH": str(param_file),
           "WANDB_DIR": str(in_tmp)}  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = in_tmp / "runs" / "softmax-digits-trial123"
    doc = json.loads((run_dir / "config.json").read_text())
    assert doc["config"]["lr"] == 0.00042 and doc["config"]["batch_size"] == 64 and doc["config"]["epochs"] == 1
    assert doc["wandb_id"] == "trial123" and doc["wandb_sweep"] == "sw1"
    metric = cfg["metric"]["name"]
    final = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= final[metric] <= 1
    (wandb_file,) = run_dir.glob("wandb/offline-run-*-trial123/run-trial123.wandb")  # the agent's run id
    wb = _summary(wandb_file)
    assert (wb["run_id"], wb["sweep_id"]) == ("trial123", "sw1")
    assert wb["summary"][metric] == pytest.approx(final[metric])  # what the sweep's controller reads

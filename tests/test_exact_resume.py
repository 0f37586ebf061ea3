"""Exact resume (issue 8): a run stopped at a checkpoint and resumed ends with the same weights, bitwise on the CPU,
and the same metrics as one run straight through, for DQN (its replay buffer saved), A2C, the VAE, the GAN and the
CNN (and a recurrent A2C, whose LSTM state is carried across the cut, REINFORCE, whose episodes are, and PPO, whose
minibatches are shuffled by the global RNG that checkpoints keep).

The stop is the one SIGTERM gives (``Run.loop`` saves and raises ``Interrupted``), triggered in this process
after a chosen step so that the cut falls mid-run at a known place.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_CNN

from fovea import checkpoint
from fovea.cli import main
from fovea.run import Run

# recipe, its tiny budget, the step after which the first run is cut (loop steps: epochs, vector steps, rollouts)
CASES = {
    "cnn": ("cnn-digits", [*TINY_CNN, "--epochs", "4", "--checkpoint-every", "100"], 2),
    "vae": ("vae-digits", ["--epochs", "4", "--eval-every", "1", "--iwae-samples", "8"], 2),
    "gan": ("gan-digits", ["--epochs", "3"], 1),
    "ddpm": ("cddpm-digits", ["--epochs", "3", "--timesteps", "20", "--sample-steps", "4", "--bound-terms", "4"], 1),
    "dqn": ("dqn-cartpole", ["--total-steps", "3000", "--learning-starts", "500", "--save-replay", "true",
                             "--eval-every", "1000", "--eval-episodes", "2"], 200),  # fmt: skip
    "dqn-efficient": ("dqn-catch", ["--total-steps", "800", "--learning-starts", "200", "--num-envs", "1",
                                    "--train-every", "1", "--target-update-every", "1", "--n-step", "3",
                                    "--prioritized", "true", "--augment", "shift-intensity", "--double", "true",
                                    "--dueling", "true", "--eps-decay-steps", "300", "--save-replay", "true",
                                    "--eval-every", "400", "--eval-episodes", "2"], 300),  # fmt: skip
    "a2c": ("a2c-cartpole", ["--total-steps", "4000", "--eval-every", "2000", "--eval-episodes", "2"], 30),
    "reinforce": ("reinforce-cartpole", ["--total-steps", "4000", "--eval-every", "2000", "--eval-episodes", "2"], 250),
    "ppo": ("ppo-cartpole", ["--total-steps", "1024", "--n-epochs", "2", "--num-minibatches", "2", "--eval-every",
                             "512", "--eval-episodes", "2"], 2),  # fmt: skip
    "ppo-lstm": ("ppo-catch", ["--recurrent", "lstm", "--hidden-size", "16", "--total-steps", "1024", "--n-epochs",
                               "2", "--eval-every", "512", "--eval-episodes", "2"], 2),  # fmt: skip
    "a2c-lstm": ("a2c-catch", ["--recurrent", "lstm", "--hidden-size", "32", "--total-steps", "3200", "--eval-every",
                               "1600", "--eval-episodes", "2"], 20),  # fmt: skip
}


def tensors(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's objects, by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    out: dict[str, torch.Tensor] = {}
    for k, v in items:
        out.update(tensors(v, f"{prefix}/{k}"))
    return out


def metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing figures (perf/...), which differ between runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def stop_after(monkeypatch, step: int) -> None:
    """Make ``Run.loop`` act as if SIGTERM arrived during loop step ``step``."""
    loop = Run.loop

    def cut(self, total, **kw):
        for s in loop(self, total, **kw):
            yield s
            if s == step:
                self._stop = signal.SIGTERM

    monkeypatch.setattr(Run, "loop", cut)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_stopped_and_resumed_run_equals_one_straight_run(case, in_tmp, monkeypatch, capsys):
    recipe, budget, cut_at = CASES[case]
    args = [*budget, "--wandb", "disabled"]
    assert main(["train", recipe, "--name", "straight", *args]) == 0
    with monkeypatch.context() as m:
        stop_after(m, cut_at)
        assert main(["train", recipe, "--name", "cut", *args]) == 128 + signal.SIGTERM
    stopped = checkpoint.list_checkpoints(in_tmp / "runs/cut/checkpoints")[-1]
    assert checkpoint.load(stopped)[0]["step"] == cut_at  # (its name counts agent steps for an agent)
    capsys.readouterr()
    assert main(["train", "--resume", "runs/cut", "--wandb", "disabled"]) == 0
    assert f"from {stopped.name}" in capsys.readouterr().err

    assert metrics(in_tmp / "runs/cut") == metrics(in_tmp / "runs/straight")  # the same steps, the same figures
    ends = {}
    for name in ("cut", "straight"):
        state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / f"runs/{name}/checkpoints")[-1])
        ends[name] = tensors(state["objects"])
    assert ends["cut"].keys() == ends["straight"].keys()
    if case.startswith("dqn"):
        assert any(k.startswith("/replay/") for k in ends["cut"])  # the buffer came along
    for k, v in ends["straight"].items():  # weights, optimizer moments, replay: bitwise
        assert torch.equal(ends["cut"][k], v), k
    cut, straight = (json.loads((in_tmp / f"runs/{n}/summary.json").read_text()) for n in ("cut", "straight"))
    assert {k: v for k, v in cut.items() if k != "wall_s"} == {k: v for k, v in straight.items() if k != "wall_s"}

"""Every agent recipe trains from the command line (on a tiny budget) and shows up in metrics.jsonl and W&B offline."""

from __future__ import annotations

import json

import pytest
from wandb_reader import history

from fovea import agents  # noqa: F401  (registers the recipes)
from fovea.agents.a2c import A2CConfig
from fovea.agents.dqn import DQNConfig
from fovea.agents.ppo import PPOConfig
from fovea.agents.reinforce import ReinforceConfig
from fovea.cli import main
from fovea.config import recipes

TINY = {
    DQNConfig: "--total-steps 600 --num-envs 2 --buffer-size 2000 --learning-starts 200 --train-every 4 "
    "--gradient-steps 1 --batch-size 32",
    A2CConfig: "--total-steps 400 --num-envs 4 --n-steps 5",
    PPOConfig: "--total-steps 400 --num-envs 4 --n-steps 5 --n-epochs 2 --num-minibatches 2",
    ReinforceConfig: "--total-steps 600 --num-envs 4 --batch-episodes 2",
}
AGENT_RECIPES = sorted(name for name, r in recipes().items() if type(r.config) in TINY)
# The Breakout twins of the Pong recipes and the Nature DQN variants run the same code as those: the slow tier
SLOW_TWINS = {name for name in AGENT_RECIPES if "breakout" in name or name.startswith("dqn-nature")}


def test_the_issue_s_recipes_exist():
    wanted = {"dqn-pong", "dqn-breakout", "a2c-pong", "a2c-breakout", "reinforce-cartpole", "dqn-cartpole",
              "a2c-cartpole", "dqn-catch", "ppo-cartpole", "ppo-catch", "ppo-pong", "ppo-breakout", "ppo-lstm-pong"}
    assert wanted <= set(AGENT_RECIPES)


@pytest.mark.parametrize(
    "recipe", [pytest.param(r, marks=pytest.mark.slow) if r in SLOW_TWINS else r for r in AGENT_RECIPES]
)
def test_agent_recipe_trains_and_logs(recipe, in_tmp, capsys):
    cfg = recipes()[recipe].config
    argv = ["train", recipe, "--name", "r", "--eval-episodes", "0", *TINY[type(cfg)].split()]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["agent_steps"] > 0
    rows = [json.loads(line) for line in (in_tmp / "runs/r/metrics.jsonl").read_text().splitlines()]
    assert any("perf/sps" in r for r in rows)
    if cfg.env in ("cartpole", "catch"):  # their episodes end within the budget; Acrobot's and Atari's may not
        assert any("train/episodic_return" in r for r in rows)
    (wb,) = (in_tmp / "runs/r/wandb").glob("offline-run-*/run-*.wandb")
    assert any("perf/sps" in r for r in history(wb))

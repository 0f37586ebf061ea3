"""DQN: TD targets by hand, the pieces of the update, resume, and learning CartPole (RL Zoo's band)."""

from __future__ import annotations

import json

import pytest
import torch

import backbones
from agents.dqn import DQNConfig, QNetwork, td_target
from fovea.cli import main
from fovea.errors import ConfigError


def test_td_target_by_hand():
    rewards = torch.tensor([1.0, 0.0, -1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])
    next_q_target = torch.tensor([[1.0, 3.0], [5.0, 2.0], [0.5, -2.0]])
    next_q_online = torch.tensor([[9.0, 0.0], [0.0, 9.0], [0.0, 9.0]])
    # DQN: max over the target network; no bootstrap after a termination
    assert td_target(rewards, terminated, next_q_target, None, 0.9).tolist() == pytest.approx(
        [1 + 0.9 * 3, 0.0, -1 + 0.9 * 0.5]
    )
    # double DQN: the online network picks a*, the target network values it
    assert td_target(rewards, terminated, next_q_target, next_q_online, 0.9).tolist() == pytest.approx(
        [1 + 0.9 * 1, 0.0, -1 + 0.9 * -2]
    )


def test_dueling_head_separates_value_and_advantage():
    torch.manual_seed(0)
    net = QNetwork(backbones.build("mlp", (4,), hidden=(6,)), 3, dueling=True)
    x = torch.randn(5, 4)
    q, h = net(x), net.backbone(x)
    adv = net.head(h)
    torch.testing.assert_close(q - q.mean(1, keepdim=True), adv - adv.mean(1, keepdim=True))
    torch.testing.assert_close(q.mean(1), net.value(h).squeeze(1))


def test_epsilon_schedule_and_config_errors():
    cfg = DQNConfig(total_steps=1000, eps_start=1.0, eps_end=0.1, eps_fraction=0.5)
    assert [cfg.epsilon(s) for s in (0, 250, 500, 900)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    with pytest.raises(ConfigError, match="batch_size = 64 is larger than buffer_size = 32"):
        DQNConfig(buffer_size=32)
    with pytest.raises(ConfigError, match="unknown env 'cartpol'; did you mean cartpole"):
        DQNConfig(env="cartpol")


def test_resume_continues_the_epsilon_schedule(in_tmp, capsys):
    argv = ["train", "dqn-cartpole", "--name", "dq", "--wandb", "disabled", "--total-steps", "600",
            "--learning-starts", "200", "--train-every", "4", "--gradient-steps", "1", "--checkpoint-every", "300",
            "--eval-episodes", "2"]  # fmt: skip
    assert main(argv) == 0
    assert main(["train", "--resume", "runs/dq", "--total-steps", "900"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["agent_steps"] == 900
    assert "from step_000000600 (step 600)" in out.err
    rows = [json.loads(line) for line in (in_tmp / "runs/dq/metrics.jsonl").read_text().splitlines()]
    eps = [r["train/epsilon"] for r in rows if "train/epsilon" in r and r["step"] > 600]
    assert eps and max(eps) < 0.5  # a resumed DQN does not start again from epsilon 1


@pytest.mark.slow
def test_dqn_learns_cartpole_within_50k_steps(in_tmp, capsys):
    assert main(["train", "dqn-cartpole", "--name", "cp", "--wandb", "disabled"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["agent_steps"] == 50_000
    assert figures["eval/best_mean_return"] >= 475, figures  # RL Zoo's tuned DQN: 500 at 50k steps


def test_save_replay_puts_the_buffer_in_the_checkpoint(in_tmp):
    from fovea import checkpoint

    argv = ["train", "dqn-cartpole", "--name", "sr", "--wandb", "disabled", "--total-steps", "300",
            "--learning-starts", "100", "--train-every", "4", "--gradient-steps", "1", "--eval-every", "0",
            "--eval-episodes", "1", "--buffer-size", "1000", "--save-replay", "true"]  # fmt: skip
    assert main(argv) == 0
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/sr/checkpoints")[-1])
    replay = state["objects"]["replay"]
    assert replay["frames"].shape == (1000, 1, 4) and replay["written"] == 301
    assert main(["train", "--resume", "runs/sr", "--total-steps", "400"]) == 0


def test_dqn_runs_on_atari_pixels(in_tmp, capsys):
    options = "--total-steps 400 --num-envs 2 --buffer-size 4000 --learning-starts 200 --eval-every 0 --eval-episodes 1"
    argv = ["train", "dqn-pong", "--name", "pong", "--wandb", "disabled", *options.split()]
    assert main(argv) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["agent_steps"] == 400 and -21 <= figures["eval/mean_return"] <= 21  # a full, unclipped Pong game
    from fovea import checkpoint

    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/pong/checkpoints")[-1])
    first_conv = state["objects"]["qnet"]["backbone.convs.0.weight"]
    assert first_conv.shape == (32, 4, 8, 8)  # the Nature CNN over 4 stacked 84x84 frames
    opt_state = state["objects"]["optimizer"]["state"]
    # one gradient step each time the agent steps cross a multiple of 4, from step 200 to 400 inclusive
    assert opt_state and all(int(s["step"]) == 51 for s in opt_state.values())


@pytest.mark.slow
def test_dqn_solves_catch_from_pixels(in_tmp, capsys):
    assert main(["train", "dqn-catch", "--name", "catch", "--wandb", "disabled"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    success_rate = (figures["eval/mean_return"] + 1) / 2  # each episode returns +1 (caught) or -1 (missed)
    assert success_rate >= 0.9, figures

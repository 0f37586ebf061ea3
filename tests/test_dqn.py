"""DQN: TD targets by hand, the pieces of the update, the fast path (masked loss, bf16, compile, overlapped env
steps) on the CPU, resume, and learning CartPole (RL Zoo's band)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fovea import backbones
from fovea.agents import dqn
from fovea.agents.base import catch_cnn, make_env
from fovea.agents.dqn import DQNConfig, QNetwork, td_loss, td_target
from fovea.agents.fastpath import EnvStepper, FastPath
from fovea.agents.replay import FrameReplay
from fovea.cli import main
from fovea.envs import vector
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
    assert replay["written"] == 301 and replay["frames"].shape == (301, 1, 4)  # the written slots, not all 1000
    assert main(["train", "--resume", "runs/sr", "--total-steps", "400"]) == 0


@pytest.mark.slow  # 10 s; the fast tier trains dqn-pong and drq100k briefly in test_agent_recipes
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


@pytest.mark.parametrize("kind", ["huber", "mse"])
def test_masked_td_loss_is_the_plain_loss_over_the_kept_transitions(kind):
    q, y = torch.randn(8, requires_grad=True), torch.randn(8)
    torch.testing.assert_close(td_loss(q, y, kind, torch.ones(8, dtype=torch.bool)), td_loss(q, y, kind))
    mask = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    y_left_out = torch.where(mask, y, torch.nan)  # whatever a left-out draw holds, it weighs nothing
    loss = td_loss(q, y_left_out, kind, mask)
    torch.testing.assert_close(loss, td_loss(q[mask], y[mask], kind))
    loss.backward()
    assert torch.isfinite(q.grad).all() and (q.grad[~mask] == 0).all() and (q.grad[mask] != 0).all()


def _filled(cfg: DQNConfig, sync_free: bool):
    """The Q-network and target of ``cfg``, and a replay (sampled without host syncs or not) of 300 random steps."""
    torch.manual_seed(0)
    env = make_env(cfg, cfg.num_envs, cfg.seed)
    qnet = dqn.build(cfg, env)
    target = dqn.build(cfg, env).requires_grad_(False)
    shape = env.single_observation_space.shape
    replay = FrameReplay(cfg.buffer_size, cfg.num_envs, shape, stack=1, sync_free=sync_free)
    obs = env.reset()
    replay.start(obs)
    rng = np.random.default_rng(0)
    for _ in range(300):
        actions = rng.integers(0, env.num_actions, cfg.num_envs)
        obs, reward, term, _, info = env.step(actions)
        replay.add(actions, reward, term, obs, info["reset"])
    env.close()
    return qnet, target, replay


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_sync_free_updates_in_bf16_and_fp32_on_the_cpu(amp):
    cfg = DQNConfig(env="catch", backbone=catch_cnn(), num_envs=2, buffer_size=1000, batch_size=32, amp=amp)
    fast = FastPath.of(cfg, "cpu")
    assert fast.dtype == (torch.bfloat16 if amp == "bf16" else None) and not fast.sync_free
    qnet, target, replay = _filled(cfg, sync_free=True)
    x = replay.sample(4, torch.Generator().manual_seed(0)).obs
    with fast.autocast():  # the trunk in bf16 under autocast, the head's Q-values in fp32 either way
        assert qnet.backbone(x.float()).dtype == (torch.bfloat16 if amp == "bf16" else torch.float32)
        assert qnet(x).dtype == torch.float32
    optimizer = torch.optim.Adam(qnet.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in qnet.parameters()]
    gen = torch.Generator().manual_seed(0)
    outs = [dqn.update(cfg, qnet, target, optimizer, replay, gen, fast) for _ in range(5)]
    assert all(torch.isfinite(o["loss"]) and o["loss"].dtype == torch.float32 for o in outs)
    assert all(not torch.equal(a, b) for a, b in zip(before, qnet.parameters(), strict=True))


def test_amp_auto_is_fp32_on_the_cpu():
    assert FastPath.of(DQNConfig(), "cpu").dtype is None and FastPath.of(DQNConfig(amp="bf16"), "cpu").dtype
    assert not DQNConfig(env="pong").overlaps_env("cpu") and DQNConfig(env="pong").overlaps_env("cuda")
    assert not DQNConfig().overlaps_env("cuda") and DQNConfig(async_env="on").overlaps_env("cpu")
    with pytest.raises(ConfigError, match="amp = 'fp8' is not allowed"):
        DQNConfig(amp="fp8")


def test_an_overlapped_atari_step_returns_what_step_returns():
    """EnvStepper's send / recv (ale-py's C++ envs stepping in the background) against AtariVector.step."""
    plain, split = (vector.make("breakout", 2, seed=3, sticky=0.25, life_loss=True) for _ in range(2))
    stepper = EnvStepper(split, overlap=True)
    assert stepper.background
    np.testing.assert_array_equal(plain.reset(), split.reset())
    rng, ends = np.random.default_rng(0), 0
    for _ in range(400):
        actions = rng.integers(0, plain.num_actions, 2)
        a = plain.step(actions)
        stepper.send(actions)
        b = stepper.recv()
        for x, y in zip(a[:4], b[:4], strict=True):
            np.testing.assert_array_equal(x, y)
        for k in ("game_over", "reset", "lives"):
            np.testing.assert_array_equal(a[4][k], b[4][k])
        np.testing.assert_array_equal(a[4]["episodes"].returns, b[4]["episodes"].returns)
        ends += int(a[2].sum())
    assert ends >= 4  # lives were lost (and games ended) along the way
    plain.close(), split.close()


@pytest.mark.parametrize("recipe", ["dqn-pong", "dqn-cartpole"])
def test_overlapped_env_steps_train_as_many_updates(recipe, in_tmp):
    from fovea import checkpoint

    options = "--total-steps 200 --num-envs 2 --buffer-size 2000 --learning-starts 100 --train-every 4 " \
              "--gradient-steps 1 --batch-size 8 --eval-every 0 --eval-episodes 0 --async-env on"  # fmt: skip
    assert main(["train", recipe, "--name", "ov", "--wandb", "disabled", *options.split()]) == 0
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/ov/checkpoints")[-1])
    opt_state = state["objects"]["optimizer"]["state"]
    # one gradient step each time the agent steps cross a multiple of 4, from step 100 to 200 inclusive
    assert opt_state and all(int(s["step"]) == 26 for s in opt_state.values())


@pytest.mark.slow
def test_a_compiled_bf16_run_learns_checkpoints_and_resumes(in_tmp, capsys):
    from fovea import checkpoint

    argv = ["train", "dqn-catch", "--name", "co", "--wandb", "disabled", "--compile", "true", "--amp", "bf16",
            "--total-steps", "600", "--learning-starts", "100", "--train-every", "2", "--checkpoint-every", "300",
            "--eval-every", "0", "--eval-episodes", "2"]  # fmt: skip
    assert main(argv) == 0
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/co/checkpoints")[-1])
    assert not [k for k in state["objects"]["qnet"] if "_orig_mod" in k]  # the keys of an uncompiled network
    rows = [json.loads(line) for line in (in_tmp / "runs/co/metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses  # 250 updates, logged every 100
    assert main(["train", "--resume", "runs/co", "--total-steps", "800"]) == 0
    out = capsys.readouterr()
    assert "from step_000000600 (step 600)" in out.err
    assert json.loads(out.out.strip().splitlines()[-1])["agent_steps"] == 800


# The data-efficient options: n-step, prioritised replay, DrQ's augmentation, Dopamine's schedules, DrQ(epsilon)


def test_dopamine_epsilon_schedule():
    cfg = DQNConfig(env="pong", total_steps=100_000, learning_starts=1600, eps_decay_steps=5000, eps_end=0.01)

    def dopamine(step, decay=5000, warmup=1600, eps=0.01):  # dqn_agent.linearly_decaying_epsilon
        bonus = (1.0 - eps) * (decay + warmup - step) / decay
        return eps + min(max(bonus, 0.0), 1.0 - eps)

    for step in (0, 1600, 2000, 4100, 6599, 6600, 50_000):
        assert cfg.epsilon(step) == pytest.approx(dopamine(step)), step


def test_drq100k_has_the_published_settings():
    from fovea.config import recipes

    cfg = recipes()["drq100k"].config
    assert (cfg.n_step, cfg.gamma, cfg.learning_starts, cfg.train_every, cfg.gradient_steps) == (10, 0.99, 1600, 1, 1)
    assert (cfg.lr, cfg.optimizer_eps, cfg.batch_size, cfg.dueling, cfg.double) == (1e-4, 1.5e-4, 32, True, True)
    assert (cfg.eps_end, cfg.eps_decay_steps, cfg.eval_epsilon, cfg.eval_episodes) == (0.01, 5000, 0.001, 100)
    assert cfg.sticky == 0 and cfg.total_steps == 100_000 and cfg.augment == "shift-intensity" and not cfg.prioritized
    assert cfg.target_is_online and not DQNConfig().target_is_online
    with pytest.raises(ConfigError, match="augment = 'shift' shifts images"):
        DQNConfig(augment="shift")
    with pytest.raises(ConfigError, match="too small for n_step = 20"):
        DQNConfig(env="pong", buffer_size=100, num_envs=4, batch_size=8, n_step=20)


def test_importance_weighted_td_loss():
    q, y = torch.randn(6, requires_grad=True), torch.randn(6)
    w = torch.tensor([1.0, 0.5, 0.25, 1.0, 0.0, 0.75])
    for kind, fn in (("huber", torch.nn.functional.smooth_l1_loss), ("mse", torch.nn.functional.mse_loss)):
        torch.testing.assert_close(td_loss(q, y, kind, weights=w), (w * fn(q, y, reduction="none")).mean())
        mask = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
        want = (w * fn(q, y, reduction="none"))[mask].sum() / 5
        torch.testing.assert_close(td_loss(q, torch.where(mask, y, torch.nan), kind, mask, w), want)


def _data_efficient(target_update_every: int) -> DQNConfig:
    return DQNConfig(env="catch", backbone=catch_cnn(), num_envs=1, buffer_size=1000, batch_size=16, double=True,
                     dueling=True, n_step=3, prioritized=True, augment="shift", train_every=1, gradient_steps=1,
                     target_update_every=target_update_every, max_grad_norm=0.0)  # fmt: skip


def test_a_data_efficient_update_with_the_online_network_as_target_equals_one_with_a_copy():
    """target_is_online saves a forward pass and changes nothing: the same update as with a separate, equal target."""
    shared, copied = _data_efficient(1), _data_efficient(2)
    assert shared.target_is_online and not copied.target_is_online
    after, priorities = [], []
    for cfg in (shared, copied):
        qnet, target, _ = _filled(cfg, sync_free=False)
        target.load_state_dict(qnet.state_dict())
        env = make_env(cfg, 1, 0)
        replay = FrameReplay(1000, 1, env.single_observation_space.shape, stack=1, n_step=3, prioritized=True)
        obs = env.reset()
        replay.start(obs)
        rng = np.random.default_rng(0)
        for _ in range(200):
            actions = rng.integers(0, env.num_actions, 1)
            obs, reward, term, _, info = env.step(actions)
            replay.add(actions, reward, term, obs, info["reset"])
        before = replay.tree.nodes.clone()
        optimizer = torch.optim.Adam(qnet.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):  # each update followed by the copy the loop makes (target_update_every = 1)
            assert torch.isfinite(dqn.update(cfg, qnet, target, optimizer, replay, gen, steps=100)["loss"])
            dqn.update_target(qnet, target, 1.0)
        assert not torch.equal(before, replay.tree.nodes)  # the sampled transitions' priorities followed their errors
        after.append([p.detach().clone() for p in qnet.parameters()])
        priorities.append(replay.tree.nodes)
    for a, b in zip(*after, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(*priorities)

"""PPO: its loss against SB3's PPO on the same data, minibatches, the KL stop, and CartPole learned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sb3_weights import MLP_POLICY_KWARGS, copy_into_sb3

from fovea.agents import a2c, ppo
from fovea.agents.base import make_env
from fovea.agents.ppo import PPOConfig, ppo_loss
from fovea.cli import main


def _sb3_ppo_with_our_weights(net, n: int, t: int, **kw):
    """SB3's PPO on CartPole with an MlpPolicy shaped like ``net`` (separate 64-64 tanh trunks) and its weights."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(lambda: gym.make("CartPole-v1"), n_envs=n)
    model = PPO("MlpPolicy", env, n_steps=t, batch_size=n * t, n_epochs=1, learning_rate=0.0, device="cpu",
                policy_kwargs=MLP_POLICY_KWARGS, **kw)
    copy_into_sb3(net, model)
    return model


@pytest.mark.parametrize("clip_vf", [0.0, 0.2])
def test_ppo_loss_equals_sb3_s_on_the_same_batch_with_clipping_active(clip_vf):
    torch.manual_seed(0)
    cfg = PPOConfig()
    env = make_env(cfg, 1, seed=0)
    net = a2c.build(cfg, env)
    n, t = 4, 8
    obs = torch.randn(n, t, 4)
    actions = torch.randint(0, 2, (n, t))
    with torch.no_grad():
        logits, values, _ = net(obs)
        logp = torch.log_softmax(logits, -1).gather(2, actions[..., None]).squeeze(2)
    old_logp = logp + 0.4 * torch.randn(n, t)  # ratios well outside [0.8, 1.2]: the clip is active
    old_values = values + 0.5 * torch.randn(n, t)
    advantages, returns = torch.randn(n, t), torch.randn(n, t)

    model = _sb3_ppo_with_our_weights(net, n, t, clip_range=0.2, clip_range_vf=clip_vf or None, ent_coef=0.01,
                                      vf_coef=0.5)  # fmt: skip
    buf = model.rollout_buffer
    time_major = lambda x: x.transpose(0, 1).numpy()  # noqa: E731  (SB3's buffers are (T, N))
    buf.observations[:] = time_major(obs)
    buf.actions[:] = time_major(actions)[..., None]
    buf.log_probs[:], buf.values[:] = time_major(old_logp), time_major(old_values)
    buf.advantages[:], buf.returns[:] = time_major(advantages), time_major(returns)
    buf.full, buf.pos = True, t
    model.train()
    theirs = model.logger.name_to_value

    flat = lambda x: x.reshape(-1)  # noqa: E731  (ours are env-major (N, T), flattened like SB3's get())
    out = ppo_loss(logits.reshape(-1, 2), flat(values), flat(actions), flat(old_logp), flat(old_values),
                   flat(advantages), flat(returns), clip=0.2, clip_vf=clip_vf, vf_coef=0.5, ent_coef=0.01)  # fmt: skip
    assert 0.2 < float(out["clip_fraction"]) < 0.9
    expected = {"loss": "train/loss", "policy_loss": "train/policy_gradient_loss", "value_loss": "train/value_loss",
                "approx_kl": "train/approx_kl", "clip_fraction": "train/clip_fraction"}  # fmt: skip
    for ours_key, key in expected.items():
        assert float(out[ours_key]) == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), ours_key
    assert float(out["entropy"]) == pytest.approx(-theirs["train/entropy_loss"], rel=1e-5)


def _rollout(cfg: PPOConfig, seed: int = 0):
    torch.manual_seed(seed)
    env = make_env(cfg, cfg.num_envs, seed=seed)
    net = a2c.build(cfg, env)
    buf = a2c.Rollout(cfg.num_envs, cfg.n_steps, env.single_observation_space.shape, torch.float32,
                      torch.device("cpu"), env.num_actions)  # fmt: skip
    obs, starts = env.reset(), np.ones(cfg.num_envs, bool)
    state = net.initial_state(cfg.num_envs)
    _, _, _, last = a2c.collect(cfg, env, net, buf, obs, starts, state, torch.Generator().manual_seed(0), [])
    return net, buf, last, state


@pytest.mark.parametrize("recurrent", ["none", "gru"])
def test_each_epoch_s_minibatches_cover_every_transition_once(recurrent):
    cfg = PPOConfig(num_envs=5, n_steps=7, num_minibatches=3, recurrent=recurrent, shared_backbone=True)
    valid = torch.rand(5, 7) > 0.2
    seen = [mb for mb in ppo._minibatches(cfg, valid, torch.device("cpu"))]
    assert len(seen) == 3
    flat = torch.cat([idx for _, idx, _ in seen]).sort().values
    assert flat.tolist() == valid.reshape(-1).nonzero().squeeze(1).tolist()
    for rows, idx, own in seen:
        if recurrent != "none":  # whole envs, and own picks the same steps among theirs
            assert set((idx // 7).tolist()) <= set(rows.tolist())
            assert torch.equal(torch.stack([r * 7 + torch.arange(7) for r in rows]).reshape(-1)[own], idx)


def test_update_learns_and_a_target_kl_stops_the_epochs_early():
    cfg = PPOConfig(num_envs=4, n_steps=16, n_epochs=10, num_minibatches=2, lr=1e-2)
    net, buf, last, state = _rollout(cfg)
    opt = a2c.make_optimizer(cfg, net)
    out = ppo.update(cfg, net, opt, buf, last, state)
    assert out["minibatches"] == 20 and out["early_stop"] == 0 and out["approx_kl"] > 0
    cfg = PPOConfig(num_envs=4, n_steps=16, n_epochs=10, num_minibatches=2, lr=1e-2, target_kl=1e-4)
    net, buf, last, state = _rollout(cfg)
    out = ppo.update(cfg, net, a2c.make_optimizer(cfg, net), buf, last, state)
    assert out["early_stop"] == 1 and 1 <= out["minibatches"] < 20


def test_recurrent_ppo_trains_on_atari_pixels(in_tmp, capsys):
    argv = ["train", "ppo-lstm-pong", "--name", "lstm", "--wandb", "disabled", "--total-steps", "128",
            "--num-envs", "2", "--n-steps", "16", "--num-minibatches", "2", "--hidden-size", "16",
            "--eval-episodes", "0"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["agent_steps"] == 128


@pytest.mark.slow
def test_ppo_learns_cartpole_within_100k_steps(in_tmp, capsys):
    assert main(["train", "ppo-cartpole", "--name", "ppo", "--wandb", "disabled"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["agent_steps"] >= 99_000
    assert figures["eval/mean_return"] >= 475, figures  # the final network on fresh games; RL Zoo: 500 at 100k


def test_the_learning_pass_runs_channels_last_on_the_cpu_with_the_same_outputs():
    """The update's forward and backward take NHWC input on the CPU (faster there); acting stays NCHW; the logits
    and values are the same either way. Fails if learning_layout is not applied in the learning pass."""
    from fovea.agents.policy import ActorCritic
    from fovea.backbones.registry import build

    torch.manual_seed(0)
    net = ActorCritic(build("nature-cnn", (4, 84, 84)), 6, pixel_scale=255.0)
    seen = []
    net.trunk.convs[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    obs = torch.randint(0, 256, (3, 2, 4, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        acting = net(obs)
    learning = net(obs)
    learning[0].sum().backward()
    assert seen == [False, True]
    assert net.trunk.convs[0].weight.is_contiguous() and net.trunk.convs[0].weight.grad.is_contiguous()
    torch.testing.assert_close(learning[0].detach(), acting[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(learning[1].detach(), acting[1], rtol=1e-5, atol=1e-5)

"""A2C's loss and gradient against SB3's A2C on the same batch: the same terms, coefficients and reduction, so a
learning difference between the two (e.g. under TensorFlow's RMSprop form) is not one of gradient scale."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from sb3_weights import MLP_POLICY_KWARGS, copy_into_sb3

from fovea.agents import a2c
from fovea.agents.base import make_env
from fovea.config import recipes


def test_a2c_loss_and_gradient_equal_sb3_s_on_the_same_batch():
    import gymnasium as gym
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env

    n, t = 4, 8
    # the recipe's nets (separate 64-64 tanh trunks, as SB3's MlpPolicy) with RL Zoo's Atari coefficients
    cfg = dataclasses.replace(recipes()["a2c-cartpole"].config, n_steps=t, num_envs=n, ent_coef=0.01, vf_coef=0.25,
                              max_grad_norm=1e9, lr=1e-12)  # fmt: skip
    torch.manual_seed(0)
    env = make_env(cfg, n, seed=0)
    net = a2c.build(cfg, env)
    env.close()
    buf = a2c.Rollout(n, t, (4,), torch.float32, torch.device("cpu"), 2)
    buf.obs.normal_()
    buf.actions = torch.randint(0, 2, (n, t))
    buf.rewards[:] = torch.randn(n, t).numpy()
    buf.terminated[1, 5] = buf.ends[1, 5] = True  # one episode ends inside the rollout
    buf.valid[:] = True
    with torch.no_grad():
        _, values, _ = net(buf.obs)
    buf.values = values
    last_value = torch.randn(n)
    tr = a2c.transitions(cfg, buf, last_value)

    model = A2C("MlpPolicy", make_vec_env(lambda: gym.make("CartPole-v1"), n_envs=n), n_steps=t, learning_rate=0.0,
                ent_coef=0.01, vf_coef=0.25, max_grad_norm=1e9, device="cpu",
                policy_kwargs=MLP_POLICY_KWARGS)
    pairs = copy_into_sb3(net, model)
    rb = model.rollout_buffer
    time_major = lambda x: x.reshape(n, t).transpose(0, 1).numpy()  # noqa: E731  (SB3's buffers are (T, N))
    rb.observations[:] = buf.obs.transpose(0, 1).numpy()
    rb.actions[:] = time_major(buf.actions)[..., None]
    rb.values[:] = time_major(values)
    rb.advantages[:], rb.returns[:] = time_major(tr.advantages), time_major(tr.returns)
    rb.full, rb.pos = True, t
    model.train()
    theirs = model.logger.name_to_value

    out = a2c.update(cfg, net, a2c.make_optimizer(cfg, net), buf, last_value, None)
    assert float(out["policy_loss"]) == pytest.approx(theirs["train/policy_loss"], rel=1e-5, abs=1e-7)
    assert float(out["value_loss"]) == pytest.approx(theirs["train/value_loss"], rel=1e-5)
    assert float(out["entropy"]) == pytest.approx(-theirs["train/entropy_loss"], rel=1e-5)
    for name, layer in pairs.items():  # the gradient itself, weight by weight (neither clips at 1e9)
        for ours, sb3 in zip(layer.parameters(), model.policy.get_submodule(name).parameters(), strict=True):
            torch.testing.assert_close(ours.grad, sb3.grad, rtol=1e-4, atol=1e-7)
    assert float(out["grad_norm"]) == pytest.approx(
        torch.cat([p.grad.reshape(-1) for p in model.policy.parameters()]).norm().item(), rel=1e-5)

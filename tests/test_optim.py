"""The agents' optimisers, step by step against their reference formulas (and SB3's RMSpropTFLike)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fovea.agents import a2c, dqn
from fovea.agents.base import make_env
from fovea.agents.optim import RMSpropEpsInside, make_optimizer
from fovea.config import recipes


def _grads(steps: int, shape=(3, 5), scale: float = 1e-3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [scale * rng.standard_normal(shape) for _ in range(steps)]


def _run(kind: str, grads: list[np.ndarray], **kw) -> list[np.ndarray]:
    p = torch.nn.Parameter(torch.zeros(grads[0].shape, dtype=torch.float64))
    opt = make_optimizer(kind, [p], **kw)
    out = []
    for g in grads:
        p.grad = torch.as_tensor(g)
        opt.step()
        out.append(p.detach().numpy().copy())
    return out


def test_rmsprop_tf_is_tensorflow_s_form_and_sb3_s_rmsprop_tf_like():
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    grads, lr, alpha, eps = _grads(6), 7e-4, 0.99, 1e-5
    ours = _run("rmsprop-tf", grads, lr=lr, eps=eps, alpha=alpha)
    p, v = np.zeros_like(grads[0]), np.ones_like(grads[0])  # the average starts at 1
    q = torch.nn.Parameter(torch.zeros(grads[0].shape, dtype=torch.float64))
    sb3 = RMSpropTFLike([q], lr=lr, alpha=alpha, eps=eps)
    for g, mine in zip(grads, ours, strict=True):
        v = alpha * v + (1 - alpha) * g**2
        p = p - lr * g / np.sqrt(v + eps)  # eps inside the root
        q.grad = torch.as_tensor(g)
        sb3.step()
        np.testing.assert_allclose(mine, p, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(mine, q.detach().numpy(), rtol=1e-12, atol=1e-15)


def test_rmsprop_centered_is_the_nature_dqn_s():
    grads, lr, alpha, eps = _grads(6, scale=0.05), 2.5e-4, 0.95, 0.01
    ours = _run("rmsprop-centered", grads, lr=lr, eps=eps, alpha=alpha)
    p, m, v = (np.zeros_like(grads[0]) for _ in range(3))
    for g, mine in zip(grads, ours, strict=True):  # NeuralQLearner.lua: g, g2, tmp = sqrt(g2 - g^2 + 0.01)
        m = 0.95 * m + 0.05 * g
        v = 0.95 * v + 0.05 * g**2
        p = p - lr * g / np.sqrt(v - m**2 + eps)
        np.testing.assert_allclose(mine, p, rtol=1e-12, atol=1e-15)


def test_torch_s_rmsprop_takes_a_first_step_about_10_over_the_gradient_times_tensorflow_s():
    grads = _grads(1, scale=1e-3)  # torch: lr * g / sqrt(0.01 g^2) = 10 lr; TensorFlow: lr * g / sqrt(1) = lr * g
    torch_form = np.abs(_run("rmsprop", grads, lr=7e-4, eps=1e-5)[0]).mean()
    tf_form = np.abs(_run("rmsprop-tf", grads, lr=7e-4, eps=1e-5)[0]).mean()
    assert 5_000 < torch_form / tf_form < 20_000


def test_recipes_use_the_optimiser_they_name():
    nature = recipes()["dqn-nature-pong"].config
    assert (nature.optimizer, nature.rmsprop_alpha, nature.optimizer_eps, nature.lr) == ("rmsprop-centered", 0.95,
                                                                                          0.01, 2.5e-4)  # fmt: skip
    env = make_env(nature, 1, seed=0)
    opt = make_optimizer(nature.optimizer, dqn.build(nature, env).parameters(), lr=nature.lr,
                         eps=nature.optimizer_eps, alpha=nature.rmsprop_alpha)  # fmt: skip
    env.close()
    assert isinstance(opt, RMSpropEpsInside) and opt.defaults["centered"] and opt.defaults["square_avg_init"] == 0
    assert recipes()["a2c-pong"].config.optimizer == "rmsprop"
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))], lr=1, eps=1)


@pytest.mark.parametrize("recipe", ["a2c-pong", "ppo-cartpole", "a2c-lstm-pong"])
def test_actor_critic_trunks_start_orthogonal_as_sb3_s_and_cleanrl_s(recipe):
    cfg = recipes()[recipe].config
    env = make_env(cfg, 1, seed=0)
    net = a2c.build(cfg, env)
    env.close()
    layers = [m for m in net.trunk.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert layers
    for m in layers:
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(gram, 2.0 * torch.eye(len(gram)), atol=1e-4, rtol=1e-4)  # gain sqrt(2)
        assert not m.bias.any()
    assert abs(float(net.policy.weight.detach().norm(dim=1).max()) - 0.01) < 1e-6  # the heads: 0.01 and 1
    if net.core is not None:  # the LSTM's (4H, H) matrices: orthogonal columns, gain 1
        w = net.core.rnn.weight_hh_l0.detach()
        torch.testing.assert_close(w.T @ w, torch.eye(w.shape[1]), atol=1e-4, rtol=1e-4)
        assert not net.core.rnn.bias_hh_l0.any()

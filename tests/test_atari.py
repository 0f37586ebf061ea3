"""Atari through ale-py: names, full-game returns across lives, raw rewards, and the evaluation env."""

from __future__ import annotations

import numpy as np
import pytest

from fovea.envs.atari import AtariVector, game_id, games, make_eval_env
from fovea.errors import ConfigError


def test_game_names():
    assert {"pong", "breakout", "space_invaders"} <= set(games())
    assert [game_id(n) for n in ("Pong", "PongNoFrameskip-v4", "ALE/SpaceInvaders-v5")] == [
        "pong",
        "pong",
        "space_invaders",
    ]
    with pytest.raises(ConfigError, match="unknown Atari game 'brekout'; did you mean breakout"):
        game_id("brekout")


def test_life_loss_ends_learning_episodes_but_the_reported_game_is_whole():
    env = AtariVector("breakout", 2, seed=0, sticky=0.0)
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    life_losses, games_over, returns, rewards = 0, 0, [], 0.0
    resets_seen = np.zeros(2, bool)
    for _ in range(6000):
        obs, reward, term, trunc, info = env.step(rng.integers(0, env.num_actions, 2))
        assert not (info["reset"] & (term | trunc | (reward != 0))).any()  # a reset step is not a transition
        resets_seen |= info["reset"]
        life_losses += int((term & ~info["game_over"]).sum())
        games_over += int(info["game_over"].sum())
        rewards += float(reward.sum())
        returns += list(info["episodes"].returns)
        if len(returns) >= 3:
            break
    assert len(returns) >= 3 and games_over >= 3
    assert life_losses >= 4 * games_over - 2  # 5 lives: about 4 life-loss terminations per game
    assert resets_seen.any()
    assert all(r == int(r) and r >= 0 for r in returns)  # raw Breakout points, not clipped signs
    env.close()


def test_eval_env_matches_the_training_preprocessing():
    vec = AtariVector("pong", 1, seed=3, sticky=0.0, noop_max=0)
    single = make_eval_env("pong", seed=3, sticky=0.0, noop_max=0)
    vec.reset()
    single.reset(seed=3)
    for _ in range(40):
        a, *_ = vec.step(np.array([0]))
        b, *_ = single.step(0)
    assert a.shape[1:] == b.shape == (4, 84, 84) and b.dtype == np.uint8
    assert (a[0, -1] != b[-1]).mean() < 0.02  # the same game frame, up to resize rounding
    assert single.render().shape == (210, 160, 3)

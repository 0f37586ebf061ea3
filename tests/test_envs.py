"""The Catch pixel task."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from fovea import envs  # noqa: F401


def test_catch_passes_gymnasiums_checker():
    check_env(gym.make("fovea/Catch-v0").unwrapped, skip_render_check=True)


@pytest.mark.parametrize("seed", range(5))
def test_following_the_ball_always_catches_it(seed):
    env = gym.make("fovea/Catch-v0")
    obs, _ = env.reset(seed=seed)
    assert obs.shape == (1, 10, 5) and obs.dtype == np.uint8 and (obs == 255).sum() == 2
    total, steps, done = 0.0, 0, False
    while not done:
        ball, paddle = np.argwhere(obs[0, :-1] == 255)[0][1], np.argwhere(obs[0, -1] == 255)[0][0]
        obs, r, term, trunc, _ = env.step(int(np.sign(ball - paddle)) + 1)
        total, steps, done = total + r, steps + 1, term or trunc
    assert (total, steps) == (1.0, 9)


def test_standing_still_misses_a_ball_in_a_corner():
    env = gym.make("fovea/Catch-v0")
    for seed in range(50):
        env.reset(seed=seed)
        if env.unwrapped.ball[1] == 0:
            break
    rewards = [env.step(1)[1] for _ in range(9)]
    assert rewards[-1] == -1.0 and sum(rewards) == -1.0

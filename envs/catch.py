"""Catch: a tiny pixel task for fast learning checks (after DeepMind's bsuite ``catch``).

A ball starts in a random column of the top row and falls one row per step; the agent moves a
paddle along the bottom row (0: left, 1: stay, 2: right). When the ball reaches the bottom the
episode ends with reward +1 if the paddle is under it and -1 otherwise. Observations are
(1, rows, columns) uint8 images, 255 where the ball or the paddle is.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class Catch(gym.Env):
    """Catch on a ``rows`` x ``columns`` grid (10 x 5 by default); episodes last ``rows - 1`` steps."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, rows: int = 10, columns: int = 5, render_mode: str | None = None):
        if rows < 2 or columns < 1:
            raise ValueError(f"Catch needs rows >= 2 and columns >= 1; got rows={rows}, columns={columns}")
        self.rows, self.columns, self.render_mode = rows, columns, render_mode
        self.observation_space = spaces.Box(0, 255, (1, rows, columns), np.uint8)
        self.action_space = spaces.Discrete(3)

    def _obs(self) -> np.ndarray:
        obs = np.zeros((1, self.rows, self.columns), np.uint8)
        obs[0, self.ball[0], self.ball[1]] = 255
        obs[0, self.rows - 1, self.paddle] = 255
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.ball = [0, int(self.np_random.integers(self.columns))]
        self.paddle = self.columns // 2
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"Catch actions are 0 (left), 1 (stay), 2 (right); got {action!r}")
        self.paddle = int(np.clip(self.paddle + int(action) - 1, 0, self.columns - 1))
        self.ball[0] += 1
        done = self.ball[0] == self.rows - 1
        reward = (1.0 if self.ball[1] == self.paddle else -1.0) if done else 0.0
        return self._obs(), reward, done, False, {}

    def render(self) -> np.ndarray:
        return np.repeat(self._obs()[0][..., None], 3, axis=-1)  # (rows, columns, 3)


gym.register("fovea/Catch-v0", entry_point=Catch, max_episode_steps=100)

"""One vector-env interface for every task: ``make(name, num_envs, seed)``.

Whatever the environment (CartPole's state vector, the Catch pixels, an Atari game), ``step``
returns ``obs, reward, terminated, truncated, info`` as numpy arrays over the envs, with the info
of ``envs.atari.AtariVector``: ``reset`` (this step only restarted a finished episode; it is not a
transition), ``game_over`` and ``episodes`` (full-episode returns and lengths). Episodes restart on
the step after they end, gymnasium's ``NEXT_STEP`` autoreset, which is also ale-py's.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from envs.atari import AtariVector, EpisodeTracker, game_id, games
from fovea.config import suggest
from fovea.errors import ConfigError

CLASSIC = {"cartpole": "CartPole-v1", "catch": "fovea/Catch-v0"}


class GymVector:
    """``num_envs`` copies of a gymnasium env in one process (``SyncVectorEnv``), with Fovea's step info."""

    def __init__(self, env_id: str, num_envs: int, *, seed: int = 0):
        import envs.catch  # noqa: F401  (registers fovea/Catch-v0)

        self.env = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
        self.num_envs, self.seed = num_envs, seed
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.num_actions = int(self.single_action_space.n)
        self.frame_stack = 1
        self.tracker = EpisodeTracker(num_envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start every env afresh, seeded with ``seed`` (default: the seed given at construction)."""
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self.tracker.start()
        return obs

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, _ = self.env.step(np.asarray(actions))
        reset, ended, episodes = self.tracker.update(reward, terminated | truncated)
        live = ~reset
        info = {"game_over": ended, "reset": reset, "episodes": episodes}
        return obs, reward.astype(np.float32), terminated & live, truncated & live, info

    def close(self) -> None:
        self.env.close()


def names() -> list[str]:
    """Every env name ``make`` takes: the classic tasks and every Atari game."""
    return sorted(CLASSIC) + games()


def check_name(name: str) -> str:
    """``name`` if ``make`` takes it; otherwise a ConfigError listing the closest names."""
    if name in CLASSIC:
        return name
    try:
        return game_id(name)
    except ConfigError:
        raise ConfigError(f"unknown env {name!r}; {suggest(name, names())}") from None


def make(name: str, num_envs: int, *, seed: int = 0, **atari_options) -> GymVector | AtariVector:
    """A vector of ``num_envs`` envs: ``cartpole``, ``catch``, or an Atari game (``pong``, ``breakout``, ...)
    with ``atari_options`` (sticky, life_loss, noop_max, ...) passed to ``AtariVector``."""
    name = check_name(name)
    if name in CLASSIC:
        return GymVector(CLASSIC[name], num_envs, seed=seed)
    return AtariVector(name, num_envs, seed=seed, **atari_options)

"""Atari from pixels: ale-py's C++ ``AtariVectorEnv`` for training, a single gymnasium env for evaluation and video.

Both apply the standard preprocessing of Mnih et al. (2015) as refined by Machado et al. (2018):
84x84 grey frames, 4 stacked, frame skip 4 with max-pooling over the last two frames, up to 30
no-op starts, FIRE on reset, and sticky actions (repeat probability 0.25, the ``-v5`` default;
0.0 reproduces the Nature setting).

Rewards come back raw: the agent clips them for learning, while the score it reports is always
the full-game, unclipped return. With ``life_loss=True`` a lost life sets ``terminated`` (an end of
episode for learning only); the game itself goes on, and ``info["game_over"]`` marks the real end.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from fovea.errors import ConfigError


def games() -> list[str]:
    """Every game ale-py ships a ROM for (``pong``, ``breakout``, ...)."""
    import ale_py.roms

    return sorted(ale_py.roms.get_all_rom_ids())


def game_id(name: str) -> str:
    """``pong`` from ``Pong``, ``PongNoFrameskip-v4`` or ``ALE/Pong-v5``; an unknown game lists close names."""
    base = re.sub(r"^ALE/|NoFrameskip|Deterministic|-v\d+$", "", name)
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", base).lower().replace("-", "_")
    known = games()
    if key in known:
        return key
    close = difflib.get_close_matches(key, known, n=4, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"{len(known)} games ship with ale-py, e.g. pong, breakout"
    raise ConfigError(f"unknown Atari game {name!r}; {hint}")


@dataclass(frozen=True)
class Episodes:
    """Full games that ended at this step: their unclipped returns and lengths (agent steps)."""

    returns: np.ndarray
    lengths: np.ndarray


class EpisodeTracker:
    """Per-env running returns and lengths under NEXT_STEP autoreset, shared by every vector env.

    ``update(reward, ended)`` takes one step's raw rewards and the envs whose episode (full game)
    ended at it; it returns ``reset``, the envs for which this step only restarted the episode that
    ended on the step before (not a transition), ``ended`` without those, and the finished ``Episodes``.
    """

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)
        self.reset_next = np.zeros(num_envs, bool)

    def start(self) -> None:
        self.returns[:], self.lengths[:], self.reset_next[:] = 0, 0, False

    def update(self, reward: np.ndarray, ended: np.ndarray) -> tuple[np.ndarray, np.ndarray, Episodes]:
        reset = self.reset_next.copy()
        live = ~reset
        self.returns[live] += reward[live]
        self.lengths[live] += 1
        ended = ended & live
        episodes = Episodes(self.returns[ended].copy(), self.lengths[ended].copy())
        self.returns[ended], self.lengths[ended] = 0, 0
        self.reset_next = ended
        return reset, ended, episodes


class AtariVector:
    """``num_envs`` Atari games stepped together in C++ (``ale_py.vector_env.AtariVectorEnv``).

    Observations are (num_envs, 4, 84, 84) uint8. ``step`` returns raw rewards, ``terminated`` (a
    lost life when ``life_loss``, or the game's end), ``truncated`` (the frame limit) and an info
    dict with ``game_over`` (the real end of a game), ``reset`` (this step was the automatic reset
    after a game over: its action was ignored and the observation starts a new game, so no
    transition should be learned from it) and ``episodes`` (the full games that ended).

    Args:
        game: a game name (``games()`` lists them).
        num_envs: games stepped in parallel.
        seed: seeds the games' RNGs (no-op starts, sticky actions).
        sticky: probability of repeating the previous action (Machado et al. 2018).
        life_loss: end an episode for learning when a life is lost.
        noop_max: up to this many no-op actions after each reset.
        max_episode_frames: truncate a game after this many emulator frames (108,000 = 30 minutes).
        num_threads: C++ worker threads (0: one per core).
    """

    def __init__(self, game: str, num_envs: int, *, seed: int = 0, sticky: float = 0.25, life_loss: bool = True,
                 noop_max: int = 30, max_episode_frames: int = 108_000, num_threads: int = 0):  # fmt: skip
        from ale_py.vector_env import AtariVectorEnv

        if num_envs < 1 or not 0.0 <= sticky <= 1.0:
            raise ConfigError(f"AtariVector needs num_envs >= 1 and 0 <= sticky <= 1; got {num_envs}, {sticky}")
        self.game, self.num_envs, self.seed = game_id(game), num_envs, seed
        self.env = AtariVectorEnv(
            self.game, num_envs, num_threads=num_threads, max_num_frames_per_episode=max_episode_frames,
            repeat_action_probability=sticky, noop_max=noop_max, episodic_life=False, life_loss_info=life_loss,
            reward_clipping=False, use_fire_reset=True,
        )  # fmt: skip
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.num_actions = int(self.single_action_space.n)
        self.frame_stack = 4  # observations stack the last 4 frames: a replay can store each frame once
        self.tracker = EpisodeTracker(num_envs)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start every env afresh, seeded with ``seed`` (default: the seed given at construction)."""
        obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self.tracker.start()
        return obs

    def step(self, actions: np.ndarray):
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start a vector step: the games step in ale-py's C++ threads until ``recv``."""
        self.env.send(np.asarray(actions))

    def recv(self):
        """What ``step(actions)`` returns, for the step ``send`` started."""
        obs, reward, terminated, truncated, info = self.env.recv()
        game_over = (terminated & (info["lives"] == 0)) | truncated
        reset, game_over, episodes = self.tracker.update(reward, game_over)
        live = ~reset
        info = {"game_over": game_over, "reset": reset, "episodes": episodes, "lives": info["lives"]}
        return obs, reward.astype(np.float32), terminated & live, truncated & live, info

    def close(self) -> None:
        self.env.close()


class FireOnReset(gym.Wrapper):
    """Press FIRE after each reset, for games that wait for it (as ``AtariVectorEnv`` does)."""

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "FIRE" in self.env.unwrapped.get_action_meanings():
            obs, _, terminated, truncated, info = self.env.step(1)
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        return obs, info


def make_eval_env(game: str, *, seed: int = 0, sticky: float = 0.25, noop_max: int = 30,
                  render_mode: str | None = "rgb_array", max_episode_frames: int = 108_000) -> gym.Env:  # fmt: skip
    """One Atari game with the same preprocessing as ``AtariVector``, full games (no life loss), raw
    rewards, and ``render()`` giving the RGB screen for video. Observations: (4, 84, 84) uint8."""
    import ale_py

    gym.register_envs(ale_py)
    name = "".join(part.capitalize() for part in game_id(game).split("_"))
    env = gym.make(f"ALE/{name}-v5", frameskip=1, repeat_action_probability=sticky, full_action_space=False,
                   max_num_frames_per_episode=max_episode_frames, render_mode=render_mode)  # fmt: skip
    env = gym.wrappers.AtariPreprocessing(env, noop_max=noop_max, frame_skip=4, screen_size=84, grayscale_obs=True)
    env = FireOnReset(env)
    env = gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")
    env.reset(seed=seed)
    return env

"""Atari from pixels: ale-py's C++ ``AtariVectorEnv`` for training and evaluation, a single gymnasium env for video.

Both apply the standard preprocessing of Mnih et al. (2015) as refined by Machado et al. (2018): 84x84 grey frames,
4 stacked, frame skip 4 with max-pooling over the last two frames, and sticky actions (repeat probability 0.25, the
``-v5`` default; 0.0 reproduces the Nature setting and the ``NoFrameskip-v4`` envs of SB3 and CleanRL).

One start protocol everywhere (training, scoring and video): a game starts with 0 to ``noop_max - 1`` no-op frames
(uniform) and then, in games that have it, one frame of FIRE: ale-py's own reset, which the video env copies. After a
lost life, in games with FIRE, the next agent step presses FIRE whatever the agent chose (as SB3's and CleanRL's
``FireResetEnv`` does after every lost life, since their episodes end there): ``info["fired"]`` marks that step, whose
action was not the agent's, so policy-gradient learners leave it out and DQN stores FIRE as its action.

Rewards come back raw: the agent clips them for learning, while the score it reports is always the full-game,
unclipped return. With ``life_loss=True`` a lost life sets ``terminated`` (an end of episode for learning only); the
game itself goes on, and ``info["game_over"]`` marks the real end: no lives left, or the frame limit (which ale-py
reports as ``terminated`` rather than ``truncated`` when a life is lost on that very step).
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


def fire_action(game: str) -> int | None:
    """The index of FIRE in ``game``'s minimal action set (the one ale-py's envs use), or None without one."""
    import ale_py
    import ale_py.roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(game_id(game)))
    actions = list(ale.getMinimalActionSet())
    return actions.index(ale_py.Action.FIRE) if ale_py.Action.FIRE in actions else None


FRAME_SKIP = 4  # emulator frames per agent step


class AtariVector:
    """``num_envs`` Atari games stepped together in C++ (``ale_py.vector_env.AtariVectorEnv``).

    Observations are (num_envs, 4, 84, 84) uint8. ``step`` returns raw rewards, ``terminated`` (a
    lost life when ``life_loss``, or the game's end), ``truncated`` (the frame limit) and an info
    dict with ``game_over`` (the real end of a game), ``reset`` (this step was the automatic reset
    after a game over: its action was ignored and the observation starts a new game, so no
    transition should be learned from it), ``fired`` (FIRE was pressed instead of the agent's action
    after a lost life) and ``episodes`` (the full games that ended).

    Args:
        game: a game name (``games()`` lists them).
        num_envs: games stepped in parallel.
        seed: seeds the games' RNGs (no-op starts, sticky actions).
        sticky: probability of repeating the previous action (Machado et al. 2018).
        life_loss: end an episode for learning when a life is lost.
        fire_on_life_loss: press FIRE on the step after a lost life, in games that have it (SB3, CleanRL).
        noop_max: each game starts with 0 .. noop_max - 1 no-op frames (then FIRE, in games that have it).
        max_episode_frames: end a game after this many emulator frames (108,000 = 30 minutes).
        num_threads: C++ worker threads (0: one per core).
    """

    def __init__(self, game: str, num_envs: int, *, seed: int = 0, sticky: float = 0.25, life_loss: bool = True,
                 fire_on_life_loss: bool = True, noop_max: int = 30, max_episode_frames: int = 108_000,
                 num_threads: int = 0):  # fmt: skip
        from ale_py.vector_env import AtariVectorEnv

        if num_envs < 1 or not 0.0 <= sticky <= 1.0 or noop_max < 1:
            raise ConfigError(f"AtariVector needs num_envs >= 1, 0 <= sticky <= 1 and noop_max >= 1; got {num_envs}, "
                              f"{sticky}, {noop_max}")  # fmt: skip
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
        self.life_loss = life_loss
        self.fire_action = fire_action(self.game) if fire_on_life_loss else None
        # ale-py truncates a game once its agent steps reach the frame limit / frame skip (rounded up)
        self.max_steps = -(-max_episode_frames // FRAME_SKIP)
        self.tracker = EpisodeTracker(num_envs)
        self.lives = np.zeros(num_envs, np.int64)
        self.fire_next = np.zeros(num_envs, bool)  # envs whose next step presses FIRE (a life was just lost)
        self.fired = np.zeros(num_envs, bool)  # ... and those whose step under way does

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start every env afresh, seeded with ``seed`` (default: the seed given at construction)."""
        obs, info = self.env.reset(seed=self.seed if seed is None else seed)
        self.tracker.start()
        self.lives[:] = info["lives"]
        self.fire_next[:] = self.fired[:] = False
        return obs

    def step(self, actions: np.ndarray):
        self.send(actions)
        return self.recv()

    def send(self, actions: np.ndarray) -> None:
        """Start a vector step: the games step in ale-py's C++ threads until ``recv``."""
        actions = np.asarray(actions)
        self.fired = self.fire_next
        if self.fired.any():
            actions = np.where(self.fired, self.fire_action, actions)
        self.env.send(actions)

    def recv(self):
        """What ``step(actions)`` returns, for the step ``send`` started."""
        obs, reward, terminated, truncated, info = self.env.recv()
        lives = info["lives"].astype(np.int64)
        live = ~self.tracker.reset_next
        # The game ends (ale-py resets it on the next step) at no lives left, a terminal state that is no life
        # lost, or the frame limit; the last is reported as `terminated` when a life is lost on that very step.
        lost = live & (lives < self.lives)
        at_limit = live & (self.tracker.lengths + 1 >= self.max_steps)
        ended = terminated & ((lives == 0) | ~lost | (not self.life_loss))
        reset, game_over, episodes = self.tracker.update(reward, ended | truncated | at_limit)
        live = ~reset
        # learning: a lost life (or the game's end) terminates; the frame limit alone truncates (it bootstraps)
        term = terminated & ~(at_limit & ~lost) & live
        trunc = (truncated | at_limit) & ~term & live
        self.lives = lives
        self.fire_next = lost & ~game_over if self.fire_action is not None else np.zeros(self.num_envs, bool)
        info = {"game_over": game_over, "reset": reset, "fired": self.fired & live, "episodes": episodes,
                "lives": lives, "episode_frame": info["episode_frame_number"]}  # fmt: skip
        return obs, reward.astype(np.float32), term, trunc, info

    def close(self) -> None:
        self.env.close()


class StartProtocol(gym.Wrapper):
    """ale-py's start of a game, for a gymnasium ALE env with frame skip 1 (below ``AtariPreprocessing``): 0 to
    ``noop_max - 1`` no-op frames, drawn from the env's seed, then one frame of FIRE in games that have it."""

    def __init__(self, env: gym.Env, noop_max: int):
        super().__init__(env)
        self.noop_max, self.rng = noop_max, np.random.default_rng()
        self.fire = "FIRE" in env.unwrapped.get_action_meanings()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        import ale_py

        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        ale = self.env.unwrapped.ale
        for _ in range(int(self.rng.integers(0, self.noop_max))):
            ale.act(ale_py.Action.NOOP)
            if ale.game_over():
                ale.reset_game()
        if self.fire:
            ale.act(ale_py.Action.FIRE)
        return self.env.unwrapped._get_obs(), info


class FireOnLifeLoss(gym.Wrapper):
    """Press FIRE on the agent step after a lost life (the game goes on), in games that have it, as ``AtariVector``."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self.fire_action = meanings.index("FIRE") if "FIRE" in meanings else None
        self.lives, self.fire_next = 0, False

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.lives, self.fire_next = self.env.unwrapped.ale.lives(), False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(self.fire_action if self.fire_next else action)
        lives = self.env.unwrapped.ale.lives()
        self.fire_next = self.fire_action is not None and lives < self.lives and not (terminated or truncated)
        self.lives = lives
        return obs, reward, terminated, truncated, info


def make_eval_env(game: str, *, seed: int = 0, sticky: float = 0.25, noop_max: int = 30, fire_on_life_loss: bool = True,
                  render_mode: str | None = "rgb_array", max_episode_frames: int = 108_000) -> gym.Env:  # fmt: skip
    """One Atari game with the same preprocessing and start protocol as ``AtariVector``, full games (no life loss),
    FIRE after a lost life, raw rewards, and ``render()`` giving the RGB screen for video. Observations:
    (4, 84, 84) uint8."""
    import ale_py

    gym.register_envs(ale_py)
    name = "".join(part.capitalize() for part in game_id(game).split("_"))
    env = gym.make(f"ALE/{name}-v5", frameskip=1, repeat_action_probability=sticky, full_action_space=False,
                   max_num_frames_per_episode=max_episode_frames, render_mode=render_mode)  # fmt: skip
    env = StartProtocol(env, noop_max)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=0, frame_skip=FRAME_SKIP, screen_size=84, grayscale_obs=True)
    if fire_on_life_loss:
        env = FireOnLifeLoss(env)
    env = gym.wrappers.FrameStackObservation(env, 4, padding_type="zero")
    env.reset(seed=seed)
    return env

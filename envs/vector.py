"""One vector-env interface for every task: ``make(name, num_envs, seed)``.

Whatever the environment (CartPole's state vector, the Catch pixels, an Atari game), ``step``
returns ``obs, reward, terminated, truncated, info`` as numpy arrays over the envs, with the info
of ``envs.atari.AtariVector``: ``reset`` (this step only restarted a finished episode; it is not a
transition), ``fired`` (the env pressed FIRE instead of the agent's action, after a lost life: Atari only),
``game_over`` and ``episodes`` (full-episode returns and lengths). Episodes restart on
the step after they end, gymnasium's ``NEXT_STEP`` autoreset, which is also ale-py's.

The classic envs can be checkpointed (``GymVector.state_dict``): the state of every env and wrapper, their RNGs,
the episode tracker and the latest observations, as arrays and JSON values (nothing pickled), so a resumed agent
plays on from the very step it stopped at. ale-py's C++ vector env keeps its state to itself: an Atari run
resumes with new games.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from fovea.config import suggest
from fovea.envs.atari import AtariVector, EpisodeTracker, game_id, games
from fovea.errors import ConfigError

CLASSIC = {"cartpole": "CartPole-v1", "catch": "fovea/Catch-v0"}


class GymVector:
    """``num_envs`` copies of a gymnasium env in one process (``SyncVectorEnv``), with Fovea's step info."""

    def __init__(self, env_id: str, num_envs: int, *, seed: int = 0):
        import fovea.envs.catch  # noqa: F401  (registers fovea/Catch-v0)

        self.env = gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(num_envs)])
        self.num_envs, self.seed = num_envs, seed
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.num_actions = int(self.single_action_space.n)
        self.frame_stack = 1
        self.tracker = EpisodeTracker(num_envs)
        self.obs: np.ndarray | None = None  # the latest observations (what the agent acts on next)

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start every env afresh, seeded with ``seed`` (default: the seed given at construction)."""
        self.obs, _ = self.env.reset(seed=self.seed if seed is None else seed)
        self.tracker.start()
        return self.obs

    def step(self, actions: np.ndarray):
        obs, reward, terminated, truncated, _ = self.env.step(np.asarray(actions))
        self.obs = obs
        reset, ended, episodes = self.tracker.update(reward, terminated | truncated)
        live = ~reset
        info = {"game_over": ended, "reset": reset, "fired": np.zeros(self.num_envs, bool), "episodes": episodes}
        return obs, reward.astype(np.float32), terminated & live, truncated & live, info

    def close(self) -> None:
        self.env.close()

    def state_dict(self) -> dict:
        """Everything that decides the envs' next steps: each env's and wrapper's own values (``_plain_state``),
        the vector's buffers and autoreset flags, the episode tracker and the latest observations."""
        if self.obs is None:
            raise ValueError("the envs have not been reset; there is no state to save")
        return {"obs": self.obs.copy(), "vector": _plain_state(self.env),
                "envs": [[_plain_state(w) for w in _wrappers(e)] for e in self.env.envs],
                "tracker": _plain_state(self.tracker)}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        envs = state["envs"]
        if len(envs) != self.num_envs:
            raise ValueError(f"the checkpoint holds {len(envs)} envs; this run has {self.num_envs}")
        for e, layers in zip(self.env.envs, envs, strict=True):
            chain = _wrappers(e)
            if [type(w).__name__ for w in chain] != [layer["class"] for layer in layers]:
                raise ValueError(f"the checkpoint's env is {[layer['class'] for layer in layers]}, this run's "
                                 f"{[type(w).__name__ for w in chain]}")  # fmt: skip
            for w, layer in zip(chain, layers, strict=True):
                _load_plain_state(w, layer)
        _load_plain_state(self.env, state["vector"])
        _load_plain_state(self.tracker, state["tracker"])
        self.obs = np.array(state["obs"], copy=True)


def _wrappers(env) -> list:
    """``env``, the env it wraps, and so on down to the unwrapped env."""
    chain = [env]
    while hasattr(chain[-1], "env"):
        chain.append(chain[-1].env)
    return chain


def _plain_state(obj) -> dict:
    """The attributes of ``obj`` that are plain values (None, numbers, arrays, lists of numbers) and the state of
    its numpy RNGs, as a checkpoint can hold them; spaces, specs, wrapped envs and the like are left out (they
    are rebuilt with the env)."""
    values, rngs = {}, {}
    for k, v in vars(obj).items():
        if isinstance(v, np.random.Generator):
            rngs[k] = v.bit_generator.state
        elif isinstance(v, np.ndarray | np.generic | bool | int | float) or v is None:
            values[k] = v.copy() if isinstance(v, np.ndarray) else v
        elif isinstance(v, list) and all(isinstance(x, bool | int | float) for x in v):
            values[k] = list(v)
    return {"class": type(obj).__name__, "values": values, "rngs": rngs}


def _load_plain_state(obj, state: dict) -> None:
    for k, v in state["values"].items():
        setattr(obj, k, np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
    for k, rng_state in state["rngs"].items():
        rng = getattr(obj, k, None)
        if not isinstance(rng, np.random.Generator):
            rng = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
            setattr(obj, k, rng)
        rng.bit_generator.state = rng_state


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

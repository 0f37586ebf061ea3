"""One vector-env interface for every task: ``make(env, num_envs, seed)``.

``env`` is a name (``cartpole``, ``catch``, an Atari game such as ``pong``, or any registered gymnasium id whose
actions are ``Discrete`` and whose observations are an image or a flat vector: ``Acrobot-v1``, ``MountainCar-v0``,
...; envs/gymenv.py says how each is fed), or, from Python, a ``gymnasium.Env`` or a function making one.

Whatever the environment, ``step`` returns ``obs, reward, terminated, truncated, info`` as numpy arrays over the envs,
with the info of ``envs.atari.AtariVector``: ``reset`` (this step only restarted a finished episode; it is not a
transition), ``fired`` (the env pressed FIRE instead of the agent's action, after a lost life: Atari only),
``game_over`` and ``episodes`` (full-episode returns and lengths). Episodes restart on the step after they end,
gymnasium's ``NEXT_STEP`` autoreset, which is also ale-py's.

Gymnasium envs whose state is all plain values (CartPole, Catch, Acrobot, MountainCar, ...) can be checkpointed
(``ResumableGymVector.state_dict``): the state of every env and wrapper, their RNGs, the episode tracker and the latest
observations, as arrays and JSON values (nothing pickled), so a resumed agent plays on from the very step it stopped
at. An env holding other state (a physics engine's world, an object of its own: ``EnvInfo.uncaptured`` names it) is a
plain ``GymVector`` without ``state_dict``, and, like Atari (ale-py's C++ vector env keeps its state to itself), a
resumed run starts new episodes.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import re

import gymnasium as gym
import numpy as np

import fovea.envs.catch  # noqa: F401  (registers fovea/Catch-v0)
from fovea.envs.atari import AtariVector, EpisodeTracker, game_id, games
from fovea.envs.gymenv import EnvInfo, captured, clone, describe_env, factory
from fovea.errors import ConfigError

CLASSIC = {"cartpole": "CartPole-v1", "catch": "fovea/Catch-v0"}  # short names of gymnasium ids
ATARI_SHAPE = (4, 84, 84)  # AtariVector's observations: 4 stacked 84x84 grey frames


class GymVector:
    """``num_envs`` copies of a gymnasium env in one process (``SyncVectorEnv``), with Fovea's step info.

    Args:
        env: a registered gymnasium id, a ``gym.Env`` (each copy a deep copy of it) or a function making one.
        num_envs: envs stepped together; env ``i`` is seeded with ``seed + i``.
        seed: the default seed of ``reset``.
        image_size: resize image observations to this (H, W); None keeps their size.
        info: the env's ``EnvInfo`` when already known (``describe``).
    """

    def __init__(self, env, num_envs: int, *, seed: int = 0, image_size: tuple[int, int] | None = None,
                 info: EnvInfo | None = None):  # fmt: skip
        label, make_one = factory(env, image_size)
        self.info = info or describe_env(label, make_one)
        self.env = gym.vector.SyncVectorEnv([make_one for _ in range(num_envs)])
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


class ResumableGymVector(GymVector):
    """A ``GymVector`` whose whole state a checkpoint holds (``state_dict``), for an exact resume."""

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
    are rebuilt with the env). ``gymenv.uncaptured`` names the attributes of an env that fit neither."""
    values, rngs = {}, {}
    for k, v in vars(obj).items():
        if isinstance(v, np.random.Generator):
            rngs[k] = v.bit_generator.state
        elif captured(v):
            values[k] = v.copy() if isinstance(v, np.ndarray) else list(v) if isinstance(v, list) else v
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


ACCEPTED = ("Fovea takes any registered gymnasium id with Discrete actions and image or vector observations "
            "(CartPole-v1, Acrobot-v1, MountainCar-v0, ...), an Atari game (pong, breakout, ...) or catch")  # fmt: skip


@functools.lru_cache(maxsize=256)
def _atari(name: str) -> str | None:
    """The Atari game ``name`` names (``game_id``), or None; a gymnasium id of another kind is none (``Blackjack-v1``
    is gymnasium's card game, not ale-py's ``blackjack``)."""
    if name in gym.registry and not _ale_id(name):
        return None
    try:
        return game_id(name)
    except ConfigError:
        return None


def _ale_id(gym_id: str) -> bool:
    return "ale_py" in str(gym.registry[gym_id].entry_point)


def is_atari(name: str) -> bool:
    """Whether the env name ``name`` is an Atari game (played by ``AtariVector``)."""
    return name not in CLASSIC and _atari(name) is not None


def _unknown(name: str) -> str:
    ids = [i for i in gym.registry if not _ale_id(i)]  # ale-py's own ids are Atari games, suggested by game name
    pool = {c.lower(): c for c in [*CLASSIC, *ids, *games()]}
    close = difflib.get_close_matches(name.lower(), list(pool), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(pool[c] for c in close)}? " if close else ""
    return f"unknown env {name!r}; {hint}{ACCEPTED}"


@functools.lru_cache(maxsize=64)
def _gym_info(gym_id: str, image_size: tuple[int, int] | None = None) -> EnvInfo:
    """The ``EnvInfo`` of a gymnasium id (one env made, checked and closed; remembered)."""
    try:
        gym.spec(gym_id)
    except (gym.error.Error, ImportError):  # no such id, version or namespace; "module:Id" whose module is missing
        raise ConfigError(_unknown(gym_id)) from None
    try:
        return describe_env(gym_id, factory(gym_id, image_size)[1])
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (a registered env that cannot be made here, e.g. a missing dependency)
        raise ConfigError(f"{gym_id} could not be made: {type(e).__name__}: {e}") from None


def check_name(name: str) -> str:
    """``name`` as ``make`` takes it: ``cartpole``, ``catch``, the Atari game it names (``pong`` for
    ``PongNoFrameskip-v4``) or the gymnasium id itself; a ConfigError saying what is accepted, with the closest
    names, when nothing has that name, or naming the space an agent cannot use (``gymenv.check_spaces``)."""
    if name in CLASSIC:
        return name
    game = _atari(name)
    if game is not None:
        return game
    _gym_info(name)
    return name


@functools.lru_cache(maxsize=64)
def _atari_actions(game: str) -> int:
    import ale_py
    import ale_py.roms

    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.loadROM(ale_py.roms.get_rom_path(game))
    return len(ale.getMinimalActionSet())


def _size(image_size) -> tuple[int, int] | None:
    return None if image_size is None else (int(image_size[0]), int(image_size[1]))


def describe(env, image_size: tuple[int, int] | None = None) -> EnvInfo:
    """What ``make(env, ...)`` gives before making it: the observation shape as fed (``image`` or vector), the
    number of actions and whether a checkpoint holds the envs' state. ``env`` as ``make`` takes it."""
    if isinstance(env, str):
        name = check_name(env)
        if is_atari(name):
            return EnvInfo(name, ATARI_SHAPE, True, _atari_actions(name))
        return _gym_info(CLASSIC.get(name, name), _size(image_size))
    return describe_env(*factory(env, _size(image_size)))


def make(env, num_envs: int, *, seed: int = 0, image_size: tuple[int, int] | None = None,
         **atari_options) -> GymVector | AtariVector:  # fmt: skip
    """A vector of ``num_envs`` envs (env ``i`` seeded with ``seed + i``).

    Args:
        env: an env name (``cartpole``, ``catch``, an Atari game such as ``pong``, or any registered gymnasium id
            with Discrete actions and image or vector observations, e.g. ``Acrobot-v1``), a ``gymnasium.Env``
            (a template: each env is a deep copy of it, so the object itself is never stepped and training and
            evaluation envs never share state; one that cannot be copied is refused) or a function making one.
        num_envs: envs stepped together.
        seed: the default seed of ``reset``.
        image_size: resize image observations to (H, W) (gymnasium envs; default: as the env gives them).
        atari_options: ``sticky``, ``life_loss``, ``noop_max``, ... of ``AtariVector`` (Atari games only).

    Returns ``AtariVector`` for Atari games; for gymnasium envs a ``ResumableGymVector`` when a checkpoint can hold
    the envs' state, else a ``GymVector`` (``info.uncaptured`` says what it cannot hold).
    """
    if isinstance(env, str) and is_atari(check_name(env)):
        if image_size is not None:
            raise ConfigError("image_size applies to gymnasium envs; Atari frames are 84x84")
        return AtariVector(env, num_envs, seed=seed, **atari_options)
    if atari_options:
        raise ConfigError(f"{', '.join(sorted(atari_options))}: options of Atari games; {env!r} is not one")
    info = describe(env, image_size)
    if isinstance(env, str):
        env = CLASSIC.get(env, env)
    cls = GymVector if info.uncaptured else ResumableGymVector
    return cls(env, num_envs, seed=seed, image_size=_size(image_size), info=info)


def make_single(env, *, seed: int = 0, image_size: tuple[int, int] | None = None, render_mode: str | None = None
                ) -> gym.Env:  # fmt: skip
    """One gymnasium env fed as ``make``'s are (an env of the vector, for watching: ``render_mode="rgb_array"`` on a
    gymnasium id), reset with ``seed``; Atari's is ``envs.atari.make_eval_env``."""
    if isinstance(env, str):
        if is_atari(check_name(env)):
            raise ConfigError(f"{env} is an Atari game: envs.atari.make_eval_env makes one to watch")
        env = CLASSIC.get(env, env)
    one = factory(env, _size(image_size), **({"render_mode": render_mode} if render_mode else {}))[1]()
    one.reset(seed=seed)
    return one


_ids = itertools.count()


def register(env, name: str | None = None) -> str:
    """A gymnasium id for ``env`` (a ``gymnasium.Env``, deep-copied for each env, or a function making one),
    registered in this process so that a config, whose ``env`` is a string, can name it; ``name`` chooses the id
    (default ``fovea-api/<Name>-<k>-v0``). The env is checked first (a ConfigError as ``make`` gives). The id lives
    only in this process: a later ``fovea eval`` or ``--resume`` from the command line must register it again. A
    string is returned as ``check_name`` gives it."""
    if isinstance(env, str):
        return check_name(env)
    label, make_one = factory(env)
    describe_env(label, make_one)
    gym_id = name or f"fovea-api/{re.sub(r'[^A-Za-z0-9_.]', '_', label)}-{next(_ids)}-v0"
    if isinstance(env, gym.Env):
        gym.register(gym_id, entry_point=lambda **kwargs: clone(env, label))
    else:
        gym.register(gym_id, entry_point=lambda **kwargs: env())
    _gym_info.cache_clear()
    _atari.cache_clear()
    return gym_id

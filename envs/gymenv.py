"""Any gymnasium env as Fovea's agents take it: its spaces checked, its observations in one of two forms.

An agent needs a ``Discrete`` action space and an observation that is either

* an image: a uint8 ``Box`` of shape (H, W, C), (C, H, W) or (H, W). It is fed channels-first, (C, H, W) uint8, as
  the Atari frames are (the network divides by 255). The channel axis is the smallest of the three (the last one when
  they tie, gymnasium's convention for rendered frames): (84, 84, 3) and (7, 7, 3) are turned, (4, 84, 84) and the
  Catch pixels (1, 10, 5) are kept, and (H, W) becomes (1, H, W). Frames are resized only when asked
  (``image_size``), with bilinear filtering;
* a flat vector: a ``Box`` of one dimension, fed as float32.

Anything else is refused in one line that names the space and what was expected. ``adapt`` wraps an env into that
form; ``describe_env`` checks one env (its spaces, and whether a checkpoint can hold its state: see ``uncaptured``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from types import ModuleType

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from fovea.errors import ConfigError

NEED_ACTIONS = "Fovea's agents need a Discrete action space"
NEED_OBS = "Fovea's agents need a uint8 image (HxWxC, CxHxW or HxW) or a flat vector (a 1-d Box)"


def _short(space) -> str:
    text = repr(space)
    return text if len(text) <= 90 else text[:87] + "..."


def check_spaces(label: str, observation_space, action_space) -> str:
    """``"image"`` or ``"vector"``: the kind of ``label``'s observations; a ConfigError saying which space is wrong
    (and what it is) when an agent cannot use the env."""
    if not isinstance(action_space, spaces.Discrete):
        kind = "continuous" if isinstance(action_space, spaces.Box) else f"{type(action_space).__name__}"
        raise ConfigError(f"{label} has a {kind} action space {_short(action_space)}; {NEED_ACTIONS}")
    if int(action_space.start) != 0:
        raise ConfigError(f"{label} has a Discrete action space that starts at {int(action_space.start)}; "
                          f"{NEED_ACTIONS} starting at 0")  # fmt: skip
    obs = observation_space
    if isinstance(obs, spaces.Box) and obs.dtype == np.uint8 and len(obs.shape) in (2, 3) and min(obs.shape) >= 1:
        return "image"
    if isinstance(obs, spaces.Box) and len(obs.shape) == 1 and np.issubdtype(obs.dtype, np.number):
        return "vector"
    what = "Box" if isinstance(obs, spaces.Box) else type(obs).__name__
    raise ConfigError(f"{label} has a {what} observation space {_short(obs)}; {NEED_OBS}; from Python, pass a "
                      "function making the env with a wrapper that gives one")  # fmt: skip


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a 3-d image shape is (H, W, C): its last axis is the smallest (ties go to the last)."""
    return shape[-1] <= min(shape[:2])


class ChannelsFirst(gym.ObservationWrapper):
    """uint8 images as (C, H, W): (H, W, C) turned, (H, W) given one channel, optionally resized to ``size`` (H, W)."""

    def __init__(self, env: gym.Env, size: tuple[int, int] | None = None):
        super().__init__(env)
        shape = env.observation_space.shape
        self.hwc = len(shape) == 2 or channels_last(shape)
        h, w, c = (*shape, 1)[:3] if len(shape) == 2 else (shape if self.hwc else (shape[1], shape[2], shape[0]))
        self.size = None if size is None or tuple(size) == (h, w) else (int(size[0]), int(size[1]))
        h, w = self.size or (h, w)
        self.observation_space = spaces.Box(0, 255, (c, h, w), np.uint8)

    def observation(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.uint8)
        if obs.ndim == 2:
            obs = obs[..., None]
        elif not self.hwc:
            obs = obs.transpose(1, 2, 0)
        if self.size is not None:
            obs = np.stack([_resize(obs[..., i], self.size) for i in range(obs.shape[-1])], -1)
        return np.ascontiguousarray(obs.transpose(2, 0, 1))


def _resize(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(plane).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def adapt(env: gym.Env, label: str, image_size: tuple[int, int] | None = None) -> gym.Env:
    """``env`` with its observations in Fovea's form (channels-first uint8 images, float32 vectors); a ConfigError
    when its spaces do not fit (``check_spaces``)."""
    if not isinstance(env, gym.Env):
        raise ConfigError(f"{label} gave {type(env).__name__}, not a gymnasium.Env")
    kind = check_spaces(label, env.observation_space, env.action_space)
    if kind == "image":
        shape = env.observation_space.shape
        turned = len(shape) == 2 or channels_last(shape)
        if turned or image_size is not None:
            env = ChannelsFirst(env, image_size)
        return env
    if image_size is not None:
        raise ConfigError(f"image_size resizes images; {label}'s observations are vectors")
    space = env.observation_space
    if space.dtype != np.float32:
        low, high = (np.asarray(b, np.float64).astype(np.float32) for b in (space.low, space.high))
        box = spaces.Box(low, high, space.shape, np.float32)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.asarray(obs, np.float32), box)
    return env


def factory(env, image_size: tuple[int, int] | None = None, **make_kwargs) -> tuple[str, Callable[[], gym.Env]]:
    """``(label, make)``: a name for messages and a function making one adapted env, from a registered gymnasium id
    (made with ``make_kwargs``, e.g. ``render_mode``), a callable returning a ``gym.Env``, or a ``gym.Env`` instance.
    An instance is a template: each env is a deep copy of it, so the object passed in is never stepped (training and
    evaluation envs stay apart); one that cannot be copied is refused (pass a callable that makes it)."""
    if isinstance(env, str):
        return env, lambda: adapt(gym.make(env, **make_kwargs), env, image_size)
    if isinstance(env, gym.Env):
        label = _label(env)

        return label, lambda: adapt(clone(env, label), label, image_size)
    if callable(env):
        label = getattr(env, "__name__", type(env).__name__) + "()"
        return label, lambda: adapt(env(), label, image_size)
    raise ConfigError(
        f"an env is a gymnasium id (str), a gymnasium.Env or a function making one; got {type(env).__name__}"
    )


def clone(env: gym.Env, label: str) -> gym.Env:
    """A deep copy of ``env``; a ConfigError when it cannot be copied."""
    try:
        return copy.deepcopy(env)
    except Exception as e:  # noqa: BLE001  (any failure of a third-party env's copy)
        raise ConfigError(f"cannot deep-copy the env {label} ({type(e).__name__}: {e}); pass a function that makes "
                          "it instead, e.g. lambda: gym.make(...)") from None  # fmt: skip


def _label(env: gym.Env) -> str:
    spec = env.unwrapped.spec
    return spec.id if spec is not None else type(env.unwrapped).__name__


# What a checkpoint need not hold: the env's structure and settings, rebuilt with it.
_REBUILT = (gym.Env, gym.Space, EnvSpec, str, bytes, dict, tuple, Enum, ModuleType, type)


def captured(value) -> bool:
    """Whether ``vector._plain_state`` keeps ``value``: None, numbers, arrays, lists of numbers, numpy RNGs."""
    if value is None or isinstance(value, np.ndarray | np.generic | bool | int | float | np.random.Generator):
        return True
    return isinstance(value, list) and all(isinstance(x, bool | int | float) for x in value)


def uncaptured(env: gym.Env) -> list[str]:
    """The attributes of ``env`` and of the envs it wraps that may hold state a checkpoint cannot keep (a physics
    world, a deque of frames, an object of the env's own): ``Layer.name`` for each; empty when an exact resume is
    possible."""
    out, layer = [], env
    while True:
        for k, v in vars(layer).items():
            if not (captured(v) or isinstance(v, _REBUILT) or callable(v)):
                out.append(f"{type(layer).__name__}.{k}")
        if not hasattr(layer, "env"):
            return out
        layer = layer.env


@dataclass(frozen=True)
class EnvInfo:
    """What an agent needs to know of an env before making it: its observations as fed (``shape``, ``image``), its
    number of actions, and why an exact resume is impossible (``uncaptured``; empty when it is possible)."""

    label: str
    shape: tuple[int, ...]
    image: bool
    num_actions: int
    uncaptured: tuple[str, ...] = ()


def describe_env(label: str, make: Callable[[], gym.Env]) -> EnvInfo:
    """Make one env, check it (a ConfigError when an agent cannot use it), play a reset and a step so that state made
    on the way shows, and describe it."""
    env = make()
    try:
        env.reset(seed=0)
        env.step(env.action_space.sample())
        space = env.observation_space
        return EnvInfo(label, tuple(space.shape), space.dtype == np.uint8, int(env.action_space.n),
                       tuple(uncaptured(env)))  # fmt: skip
    finally:
        env.close()

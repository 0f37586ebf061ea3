"""``atari:GAME`` and ``atari:GAME:rgb``: frames of an Atari game played by a uniformly random policy (84x84 grey,
or 64x64 colour), one kept every 4 agent steps; the splits are played from their own seeds, so they share no
episode. They are generated, and cached when given a cache folder."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from fovea.config import suggest
from fovea.errors import ConfigError
from fovea.vision.image_data import SPLITS, ImageData

ATARI_FRAMES = {"train": 4000, "val": 500, "test": 500}
"""Frames per split of the ``atari:`` data sets."""
ATARI_SEEDS = {"train": 0, "val": 1, "test": 2}


def atari_game(name: str) -> str:
    """ale-py's ROM id (``space_invaders``) for ``space_invaders``, ``SpaceInvaders`` or ``space-invaders``."""
    import ale_py.roms

    known = sorted(ale_py.roms.get_all_rom_ids())
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    if key not in known:
        raise ConfigError(f"unknown Atari game {name!r}; {suggest(key, known)}")
    return key


def collect_atari(game: str, rgb: bool, count: int, seed: int) -> np.ndarray:
    """``count`` frames of ``game`` played by a uniformly random policy, one kept every 4 agent steps.

    Args:
        game: an ale-py ROM id (``pong``).
        rgb: 64x64 colour frames (count, 3, 64, 64); else 84x84 grey (count, 1, 84, 84). Resized with INTER_AREA.
        count: frames to keep.
        seed: seeds the game and the policy; episodes restart when they end.
    """
    import ale_py
    import cv2
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make(
        f"ALE/{game.title().replace('_', '')}-v5",
        obs_type="rgb" if rgb else "grayscale",
        frameskip=4,
        repeat_action_probability=0.0,
    )
    size = 64 if rgb else 84
    frames = np.empty((count, 3 if rgb else 1, size, size), np.uint8)
    rng = np.random.default_rng(seed)
    try:
        env.reset(seed=seed)
        actions, kept, steps = int(env.action_space.n), 0, 0
        while kept < count:
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(actions)))
            steps += 1
            if steps % 4 == 0:
                small = cv2.resize(obs, (size, size), interpolation=cv2.INTER_AREA)
                frames[kept] = small.transpose(2, 0, 1) if rgb else small[None]
                kept += 1
            if terminated or truncated:
                env.reset()
    finally:
        env.close()
    return frames


def _read_atari_cache(path: Path, shape: tuple[int, int, int]) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {s: z[s] for s in SPLITS}
        for s, a in arrays.items():
            if a.dtype != np.uint8 or a.shape != (ATARI_FRAMES[s], *shape):
                raise ValueError(
                    f"its {s} frames are {a.dtype.name} {a.shape}, expected uint8 {(ATARI_FRAMES[s], *shape)}"
                )
    except Exception as e:  # a cache is ours to rebuild, whatever is wrong with it
        warnings.warn(f"Atari frame cache {path} is unusable ({e}); collecting the frames again", stacklevel=4)
        return None
    return arrays


def atari_frames(game: str, rgb: bool, split: str, cache_dir: Path | None) -> ImageData:
    """The ``split`` frames of ``game`` (an ale-py ROM id), label 0 each: collected, or read from (and first
    written to) ``cache_dir``/atari-GAME[-rgb].npz when ``cache_dir`` is given; an unusable cache is rebuilt."""
    shape = (3, 64, 64) if rgb else (1, 84, 84)
    if cache_dir is None:
        images = collect_atari(game, rgb, ATARI_FRAMES[split], ATARI_SEEDS[split])
    else:
        path = cache_dir / f"atari-{game}{'-rgb' if rgb else ''}.npz"
        arrays = _read_atari_cache(path, shape)
        if arrays is None:
            arrays = {s: collect_atari(game, rgb, ATARI_FRAMES[s], ATARI_SEEDS[s]) for s in SPLITS}
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            try:
                with tmp.open("wb") as f:
                    np.savez_compressed(f, **arrays)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        images = arrays[split]
    return ImageData(torch.from_numpy(images), torch.zeros(len(images), dtype=torch.int64), 255, ("frame",))

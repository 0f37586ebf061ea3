"""Atari scores as the Atari 100k papers report them: human-normalised scores, and the IQM, median and mean over games
with 95% stratified-bootstrap confidence intervals, computed as rliable does (Agarwal et al., "Deep Reinforcement
Learning at the Edge of the Statistical Precipice", NeurIPS 2021; github.com/google-research/rliable).

A score table is (runs, games): one row per seed, one column per game. rliable's aggregates:

- mean: the mean over games of each game's mean over runs (``metrics.aggregate_mean``);
- median: the median over games of those per-game means (``metrics.aggregate_median``);
- IQM: the 25%-trimmed mean of all runs x games scores pooled (``metrics.aggregate_iqm``,
  ``scipy.stats.trim_mean(scores, 0.25, axis=None)``);
- intervals (``library.get_interval_estimates``, method 'percentile'): ``reps`` resamples, each drawing, for every
  (run, game) cell, a run of that game with replacement (``StratifiedBootstrap.update_indices``:
  ``np.random.choice(runs, (runs, games))``, from NumPy's global generator), then the 2.5th and 97.5th
  percentiles of the aggregate over the resamples (``np.percentile``, as arch's ``conf_int`` does).

The same draws from ``np.random.RandomState(seed)`` give the same intervals as rliable after ``np.random.seed(seed)``.
This module needs NumPy and SciPy only (rliable 1.2.0 itself needs ``arch``, which imports only with pandas < 3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import trim_mean

# Random-agent and human scores per game, the standard ones (Mnih et al. 2015; Wang et al. 2016 for those it added),
# as Dopamine's labs/atari_100k/normalization_utils.py and rliable's Atari data list them; keys as ale-py spells the
# games. The 26 games of the Atari 100k benchmark (Kaiser et al. 2019).
RANDOM = {
    "alien": 227.8, "amidar": 5.8, "assault": 222.4, "asterix": 210.0, "bank_heist": 14.2, "battle_zone": 2360.0,
    "boxing": 0.1, "breakout": 1.7, "chopper_command": 811.0, "crazy_climber": 10780.5, "demon_attack": 152.1,
    "freeway": 0.0, "frostbite": 65.2, "gopher": 257.6, "hero": 1027.0, "jamesbond": 29.0, "kangaroo": 52.0,
    "krull": 1598.0, "kung_fu_master": 258.5, "ms_pacman": 307.3, "pong": -20.7, "private_eye": 24.9, "qbert": 163.9,
    "road_runner": 11.5, "seaquest": 68.4, "up_n_down": 533.4,
}  # fmt: skip
HUMAN = {
    "alien": 7127.7, "amidar": 1719.5, "assault": 742.0, "asterix": 8503.3, "bank_heist": 753.1,
    "battle_zone": 37187.5, "boxing": 12.1, "breakout": 30.5, "chopper_command": 7387.8, "crazy_climber": 35829.4,
    "demon_attack": 1971.0, "freeway": 29.6, "frostbite": 4334.7, "gopher": 2412.5, "hero": 30826.4,
    "jamesbond": 302.8, "kangaroo": 3035.0, "krull": 2665.5, "kung_fu_master": 22736.3, "ms_pacman": 6951.6,
    "pong": 14.6, "private_eye": 69571.3, "qbert": 13455.0, "road_runner": 7845.0, "seaquest": 42054.7,
    "up_n_down": 11693.2,
}  # fmt: skip
GAMES = tuple(sorted(RANDOM))


def human_normalized(score: float | np.ndarray, game: str) -> float | np.ndarray:
    """(score - random) / (human - random) for ``game`` (an ale-py name): 0 plays like a random agent, 1 like the
    human tester."""
    if game not in RANDOM:
        raise KeyError(f"no random and human scores for {game!r}; the Atari 100k games are {', '.join(GAMES)}")
    return (np.asarray(score, dtype=np.float64) - RANDOM[game]) / (HUMAN[game] - RANDOM[game])


def aggregate_mean(scores: np.ndarray) -> float:
    """Mean over games of the per-game mean over runs; ``scores`` is (runs, games)."""
    return float(np.mean(np.mean(scores, axis=0)))


def aggregate_median(scores: np.ndarray) -> float:
    """Median over games of the per-game mean over runs."""
    return float(np.median(np.mean(scores, axis=0)))


def aggregate_iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of all runs x games scores."""
    return float(trim_mean(scores, proportiontocut=0.25, axis=None))


AGGREGATES: dict[str, Callable[[np.ndarray], float]] = {
    "iqm": aggregate_iqm,
    "median": aggregate_median,
    "mean": aggregate_mean,
}


def _batched(name: str, resamples: np.ndarray) -> np.ndarray:
    """``name``'s aggregate of each (runs, games) resample in ``resamples`` (reps, runs, games)."""
    reps = resamples.shape[0]
    if name == "iqm":
        return trim_mean(resamples.reshape(reps, -1), proportiontocut=0.25, axis=1)
    per_game = resamples.mean(axis=1)  # (reps, games)
    return np.median(per_game, axis=1) if name == "median" else per_game.mean(axis=1)


def stratified_bootstrap_ci(scores: np.ndarray, name: str, reps: int = 50_000, seed: int = 0, size: float = 0.95,
                            chunk: int = 5_000) -> tuple[float, float]:  # fmt: skip
    """The ``size`` percentile interval of aggregate ``name`` (iqm, median, mean) over ``reps`` stratified
    bootstrap resamples of ``scores`` (runs, games), drawn as rliable 1.2.0 draws them with NumPy's legacy generator
    seeded ``seed``. Resamples are made ``chunk`` at a time (the draws continue one stream, so the result does not
    depend on ``chunk``)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (runs, games) with at least one run; got shape {scores.shape}")
    runs, games = scores.shape
    rng = np.random.RandomState(seed)
    cols = np.arange(games)[None, None, :]
    values = []
    for start in range(0, reps, chunk):
        n = min(chunk, reps - start)
        rows = rng.choice(runs, (n, runs, games), replace=True)  # one run per (run, game) cell, within its game
        values.append(_batched(name, scores[rows, cols]))
    alpha = (1.0 - size) / 2
    lo, hi = np.percentile(np.concatenate(values), [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


def summarize(scores: np.ndarray, reps: int = 50_000, seed: int = 0) -> dict:
    """IQM, median and mean of ``scores`` (runs, games) with their 95% stratified-bootstrap intervals:
    {"iqm": x, "iqm_ci": [lo, hi], "median": ..., "median_ci": ..., "mean": ..., "mean_ci": ...}."""
    out: dict = {}
    for name, fn in AGGREGATES.items():
        out[name] = fn(np.asarray(scores, dtype=np.float64))
        out[f"{name}_ci"] = list(stratified_bootstrap_ci(scores, name, reps=reps, seed=seed))
    return out

"""Atari through ale-py: names, full-game returns across lives, raw rewards, and the evaluation env."""

from __future__ import annotations

import numpy as np
import pytest

from fovea.envs.atari import AtariVector, game_id, games, make_eval_env
from fovea.errors import ConfigError


def test_game_names():
    assert {"pong", "breakout", "space_invaders"} <= set(games())
    assert [game_id(n) for n in ("Pong", "PongNoFrameskip-v4", "ALE/SpaceInvaders-v5")] == [
        "pong",
        "pong",
        "space_invaders",
    ]
    with pytest.raises(ConfigError, match="unknown Atari game 'brekout'; did you mean breakout"):
        game_id("brekout")


def test_life_loss_ends_learning_episodes_but_the_reported_game_is_whole():
    env = AtariVector("breakout", 2, seed=0, sticky=0.0)
    obs = env.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    life_losses, games_over, returns, rewards = 0, 0, [], 0.0
    resets_seen = np.zeros(2, bool)
    for _ in range(6000):
        obs, reward, term, trunc, info = env.step(rng.integers(0, env.num_actions, 2))
        assert not (info["reset"] & (term | trunc | (reward != 0))).any()  # a reset step is not a transition
        resets_seen |= info["reset"]
        life_losses += int((term & ~info["game_over"]).sum())
        games_over += int(info["game_over"].sum())
        rewards += float(reward.sum())
        returns += list(info["episodes"].returns)
        if len(returns) >= 3:
            break
    assert len(returns) >= 3 and games_over >= 3
    assert life_losses >= 4 * games_over - 2  # 5 lives: about 4 life-loss terminations per game
    assert resets_seen.any()
    assert all(r == int(r) and r >= 0 for r in returns)  # raw Breakout points, not clipped signs
    env.close()


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_video_env_plays_the_training_env_s_game_frame_for_frame(game):
    """One start protocol (no-op frames, then FIRE) and FIRE after a lost life in both envs: with no no-ops and no
    sticky actions, the same actions give the same frames, across a lost life in Breakout."""
    vec = AtariVector(game, 1, seed=3, sticky=0.0, noop_max=1)
    single = make_eval_env(game, seed=3, sticky=0.0, noop_max=1)
    a, b = vec.reset(), single.reset(seed=3)[0]
    lives_lost = 0
    for t in range(300):
        assert (a[0, -1] != b[-1]).mean() < 0.02, t  # the same game frame, up to resize rounding
        action = 0 if t % 40 < 30 else 3  # mostly no-ops: Breakout loses lives
        a, _, _, _, info = vec.step(np.array([action]))
        b, *_ = single.step(action)
        lives_lost += int(info["fired"][0])
    assert b.shape == (4, 84, 84) and b.dtype == np.uint8 and single.render().shape == (210, 160, 3)
    assert lives_lost >= (2 if game == "breakout" else 0)


def test_fire_after_a_lost_life_ends_a_game_of_no_ops():
    """SB3's and CleanRL's wrappers press FIRE after every lost life: Breakout played with no-ops then ends within
    a few hundred steps; without it the ball is never served again and the game sits at 4 lives."""
    for fire, over in ((True, True), (False, False)):
        env = AtariVector("breakout", 1, seed=0, sticky=0.0, fire_on_life_loss=fire)
        env.reset()
        fired = 0
        for _ in range(3000):
            _, _, term, _, info = env.step(np.zeros(1, np.int64))
            fired += int(info["fired"][0])
            if info["game_over"][0]:
                break
        assert bool(info["game_over"][0]) == over and fired == (4 if fire else 0)
        assert info["lives"][0] == (0 if fire else 4)
        env.close()
    video = make_eval_env("breakout", seed=0, sticky=0.0)
    video.reset(seed=0)
    for steps in range(1, 3000):  # noqa: B007
        _, _, terminated, truncated, _ = video.step(0)
        if terminated or truncated:
            break
    assert terminated and steps < 1000


def _first_life_loss(seed: int) -> int:
    env = AtariVector("breakout", 1, seed=seed, sticky=0.0, fire_on_life_loss=False)
    env.reset()
    for t in range(1, 500):
        if env.step(np.zeros(1, np.int64))[2][0]:
            return t
    raise AssertionError("no life lost")


def test_a_life_lost_on_the_frame_limit_step_ends_the_game():
    """ale-py reports terminated=True, truncated=False with lives left when the frame limit falls on the step that
    loses a life, and restarts the game on the next step: that step must end the game."""
    loss = _first_life_loss(seed=0)
    env = AtariVector("breakout", 1, seed=0, sticky=0.0, fire_on_life_loss=False, max_episode_frames=4 * loss)
    env.reset()
    for _ in range(loss - 1):
        assert not env.step(np.zeros(1, np.int64))[4]["game_over"][0]
    _, _, term, trunc, info = env.step(np.zeros(1, np.int64))
    assert term[0] and not trunc[0] and info["lives"][0] > 0  # a lost life: no bootstrap
    assert info["game_over"][0] and list(info["episodes"].lengths) == [loss]
    _, _, term, trunc, info = env.step(np.zeros(1, np.int64))
    assert info["reset"][0] and not (term[0] or trunc[0])  # the restart is not a transition
    assert info["lives"][0] == 5 and info["episode_frame"][0] < 40


@pytest.mark.parametrize("game", ["breakout", "pong"])
def test_every_game_end_is_seen_the_step_before_ale_py_restarts_the_game(game):
    """Random play with a short frame limit: a step restarts a game (its episode frame number falls) exactly when
    the step before it was reported as the game's end, whatever ended it."""
    env = AtariVector(game, 4, seed=1, sticky=0.25, max_episode_frames=600)
    env.reset()
    rng = np.random.default_rng(0)
    frame, over, ends = np.zeros(4, np.int64), np.zeros(4, bool), 0
    for _ in range(2000):
        _, _, _, trunc, info = env.step(rng.integers(0, env.num_actions, 4))
        restarted = info["episode_frame"] < frame
        assert (restarted == over).all() and (info["reset"] == over).all()
        frame, over = info["episode_frame"].astype(np.int64), info["game_over"]
        ends += int(over.sum())
    assert ends >= 8

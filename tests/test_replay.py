"""The frame-once replay: every sampled transition is one that happened, stacks never cross episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fovea.agents.replay import FrameReplay


class FakeStackEnv:
    """Vector env with the stacking and autoreset semantics of AtariVectorEnv, on 2x2 frames whose
    value identifies (time, env), so the true observations are known."""

    def __init__(self, num_envs: int, stack: int, episode_len: list[int], seed: int = 0):
        self.n, self.k, self.lens = num_envs, stack, episode_len
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.counter = 0

    def _frame(self) -> np.ndarray:
        self.counter += 1
        return np.full((self.n, 2, 2), 0, np.int64) + self.counter * 10 + np.arange(self.n)[:, None, None]

    def reset(self):
        self.stacks = np.zeros((self.n, self.k, 2, 2), np.int64)
        self.stacks[:, -1] = self._frame()
        self.age = np.zeros(self.n, int)
        self.pending = np.zeros(self.n, bool)
        return self.stacks.copy()

    def step(self, actions):
        frame = self._frame()
        reset = self.pending.copy()
        self.stacks = np.concatenate([self.stacks[:, 1:], frame[:, None]], axis=1)
        self.stacks[reset, :-1] = 0  # a restarted game: a fresh, zero-padded stack
        self.age = np.where(reset, 0, self.age + 1)
        done = (self.age >= np.array(self.lens)) & ~reset
        term = done & (self.rng.random(self.n) < 0.5)
        trunc = done & ~term
        reward = np.where(reset, 0.0, self.rng.normal(size=self.n))
        self.pending = done
        return self.stacks.copy(), reward, term, trunc, reset


@pytest.mark.parametrize("sync_free", [False, True], ids=["checked", "sync-free"])
@pytest.mark.parametrize(("capacity", "stack"), [(2000, 4), (60, 4), (45, 1)])  # small capacities wrap many times
def test_every_sample_is_a_real_transition(capacity, stack, sync_free):
    env = FakeStackEnv(num_envs=3, stack=stack, episode_len=[5, 7, 3])
    replay = FrameReplay(capacity, 3, (2, 2), stack=stack, dtype=torch.int64, sync_free=sync_free)
    obs = env.reset()
    replay.start(obs if stack > 1 else obs[:, -1])
    truth = {}  # newest frame value of obs -> (obs, action, reward, terminated, next_obs)
    gen = torch.Generator().manual_seed(0)
    for step in range(400):
        actions = np.arange(3) + step % 4
        nxt, reward, term, trunc, reset = env.step(actions)
        replay.add(actions, reward, term, nxt if stack > 1 else nxt[:, -1], reset)
        for e in np.flatnonzero(~reset):
            truth[int(obs[e, -1, 0, 0])] = (obs[e], actions[e], reward[e], term[e], nxt[e])
        obs = nxt
        if step > 20 and step % 7 == 0:
            b = replay.sample(64, gen)
            assert (b.mask is not None) == sync_free  # the checked path redraws until every one is valid
            for i in range(64):
                if b.mask is not None and not b.mask[i]:
                    continue  # (left out of the loss; test_sync_free_sampling_masks_what_it_cannot_redraw)
                key = int(b.obs[i, -1, 0, 0]) if stack > 1 else int(b.obs[i, 0, 0])
                o, a, r, d, n = truth[key]  # KeyError: a transition out of a reset step was sampled
                want_o, want_n = (o, n) if stack > 1 else (o[-1], n[-1])
                np.testing.assert_array_equal(b.obs[i].numpy(), want_o)  # stacks zero-padded at episode starts
                np.testing.assert_array_equal(b.next_obs[i].numpy(), want_n)
                assert (b.actions[i].item(), b.terminated[i].item()) == (a, float(d))
                assert b.rewards[i].item() == pytest.approx(r)


def _mostly_resets(capacity: int = 200, sync_free: bool = True) -> FrameReplay:
    """A one-env ring of 4-frame stacks where three steps in four only restart a game (not transitions)."""
    replay = FrameReplay(capacity, 1, (2, 2), stack=4, dtype=torch.int64, sync_free=sync_free)
    replay.start(np.zeros((1, 4, 2, 2), np.int64))
    for t in range(1, 3 * capacity):
        frame = np.full((1, 4, 2, 2), t, np.int64)
        replay.add([t % 3], [float(t)], [t % 5 == 0], frame, [t % 4 != 0])
    return replay


def test_sync_free_sampling_masks_what_it_cannot_redraw():
    replay = _mostly_resets()
    slot, env, mask = replay.draw(4096, torch.Generator().manual_seed(0))
    # kept: exactly the draws that are transitions; left out: about 0.75 ** REDRAWS of them (10%), never all
    torch.testing.assert_close(mask, replay.valid[slot, env])
    assert 0.05 < 1 - mask.float().mean() < 0.16
    # the first valid of independent uniform candidates is uniform over the transitions held
    counts = torch.bincount(slot[mask], minlength=replay.slots)[replay.valid[:, 0]].float()
    assert len(counts) == 49 and 0.7 * counts.mean() < counts.min() and counts.max() < 1.3 * counts.mean()


def test_sync_free_stacks_equal_the_checked_path_s():
    fast, checked = _mostly_resets(sync_free=True), _mostly_resets(sync_free=False)
    slot, env, mask = fast.draw(256, torch.Generator().manual_seed(1))
    a, b = fast.sample(256, torch.Generator().manual_seed(1)), checked.gather(slot, env)
    assert b.mask is None and torch.equal(a.mask, mask)
    for field in ("obs", "actions", "rewards", "terminated", "next_obs"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    c = checked.sample(256, torch.Generator().manual_seed(1))  # the checked path draws until all are valid
    assert c.mask is None and len({int(x) for x in c.obs[:, -1, 0, 0]}) > 40


def test_truncation_bootstraps_and_termination_does_not():
    replay = FrameReplay(100, 1, (2, 2), stack=1)
    replay.start(np.zeros((1, 2, 2), np.uint8))
    replay.add([0], [1.0], [False], np.ones((1, 2, 2), np.uint8), [False])  # truncated: not terminated
    replay.add([1], [2.0], [True], np.full((1, 2, 2), 2, np.uint8), [False])  # terminated
    replay.add([0], [0.0], [False], np.full((1, 2, 2), 3, np.uint8), [True])  # the reset step: not stored
    replay.add([2], [3.0], [False], np.full((1, 2, 2), 4, np.uint8), [False])
    b = replay.sample(256, torch.Generator().manual_seed(0))
    by_obs = {int(o[0, 0]): (int(a), float(d)) for o, a, d in zip(b.obs, b.actions, b.terminated, strict=True)}
    # truncation (0 -> 1) bootstraps, termination (1 -> 2) does not, the reset step (2 -> 3) is never sampled
    assert by_obs == {0: (0, 0.0), 1: (1, 1.0), 3: (2, 0.0)}


def test_memory_per_atari_transition():
    replay = FrameReplay(10_000, 8, (84, 84))
    per_transition = replay.nbytes / (replay.slots * replay.num_envs)
    assert per_transition == 84 * 84 + 11  # one frame, int32 action, float32 reward, three bool flags
    assert per_transition * 1_000_000 <= 7.2e9  # a 1M-transition Atari buffer within 7.2 GB


def test_too_small_or_empty_is_refused():
    with pytest.raises(ValueError, match="too small"):
        FrameReplay(10, 4, (84, 84))
    replay = FrameReplay(100, 1, (84, 84))
    replay.start(np.zeros((1, 4, 84, 84), np.uint8))
    with pytest.raises(ValueError, match="cannot sample yet"):
        replay.sample(4)

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


# n-step returns and prioritised replay


def _hand_worked(n_step: int = 3, gamma: float = 0.5, **options) -> FrameReplay:
    """One env, 1-frame observations whose value names the slot: an episode that terminates (slots 0-1), a reset
    step (2), an episode truncated after two steps (3-4), a reset step (5), and an episode still going (6-9)."""
    replay = FrameReplay(100, 1, (2, 2), stack=1, dtype=torch.int64, n_step=n_step, gamma=gamma, **options)
    frame = lambda v: np.full((1, 2, 2), v, np.int64)  # noqa: E731
    replay.start(frame(0))
    steps = [  # (reward, terminated, reset): the step from the slot of that index to the next one
        (1.0, False, False), (2.0, True, False), (0.0, False, True),  # terminates at 1; 2 only restarts the game
        (3.0, False, False), (4.0, False, False), (0.0, False, True),  # truncated after 4 (bootstraps from 5)
        (5.0, False, False), (6.0, False, False), (7.0, False, False),
    ]  # fmt: skip
    for t, (r, term, reset) in enumerate(steps):
        replay.add([t], [r], [term], frame(t + 1), [reset])
    return replay


# slot -> (n-step return, terminated, observation bootstrapped from, gamma^m), worked by hand for n = 3, gamma = 0.5
BY_HAND = {
    0: (1 + 0.5 * 2, 1.0, 2, 0.25),  # two steps, then the termination: no bootstrap
    1: (2.0, 1.0, 2, 0.5),
    3: (3 + 0.5 * 4, 0.0, 5, 0.25),  # the truncation: bootstraps from the truncated episode's last frame
    4: (4.0, 0.0, 5, 0.5),
    6: (5 + 0.5 * 6 + 0.25 * 7, 0.0, 9, 0.125),  # a full window
}  # slots 2 and 5 are reset steps; 7 and 8 wait until their windows are written


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
@pytest.mark.parametrize("sync_free", [False, True], ids=["checked", "sync-free"])
def test_n_step_returns_by_hand_across_a_termination_and_a_truncation(sync_free, prioritized):
    replay = _hand_worked(sync_free=sync_free, prioritized=prioritized)
    assert len(replay) == 7  # slots 0..6 (two of them reset steps, never drawn)
    b = replay.sample(512, torch.Generator().manual_seed(0))
    keep = b.mask if b.mask is not None else torch.ones(512, dtype=torch.bool)
    seen = {}
    for i in np.flatnonzero(keep.numpy()):
        seen[int(b.obs[i, 0, 0])] = (b.rewards[i].item(), b.terminated[i].item(), int(b.next_obs[i, 0, 0]),
                                     b.discount[i].item(), int(b.actions[i]))  # fmt: skip
    assert set(seen) == set(BY_HAND)
    for slot, (ret, term, nxt, discount) in BY_HAND.items():
        assert seen[slot] == (pytest.approx(ret), term, nxt, pytest.approx(discount), slot), slot


@pytest.mark.parametrize("prioritized", [False, True], ids=["uniform", "prioritized"])
@pytest.mark.parametrize(("capacity", "stack"), [(2000, 4), (90, 4), (60, 1)])  # small capacities wrap many times
def test_every_n_step_sample_is_the_window_that_happened(capacity, stack, prioritized):
    n, gamma, envs = 4, 0.9, 3
    env = FakeStackEnv(num_envs=envs, stack=stack, episode_len=[5, 7, 3])
    replay = FrameReplay(capacity, envs, (2, 2), stack=stack, dtype=torch.int64, n_step=n, gamma=gamma,
                         prioritized=prioritized)  # fmt: skip
    obs = env.reset()
    replay.start(obs if stack > 1 else obs[:, -1])
    history = [[] for _ in range(envs)]  # per env: (key, obs, action, reward, terminated, next_obs, reset)
    gen = torch.Generator().manual_seed(0)
    checked = 0
    for step in range(300):
        actions = np.arange(envs) + step % 4
        nxt, reward, term, trunc, reset = env.step(actions)
        replay.add(actions, reward, term, nxt if stack > 1 else nxt[:, -1], reset)
        for e in range(envs):
            history[e].append((int(obs[e, -1, 0, 0]), obs[e], actions[e], reward[e], term[e], nxt[e], reset[e]))
        obs = nxt
        if step < 30 or step % 9:
            continue
        truth = {}
        for seq in history:
            for i, (key, o, a, _, _, _, reset_step) in enumerate(seq):
                if reset_step or i + n > len(seq):
                    continue  # a restart, or a window not yet written (the ring does not sample those)
                ret, m, done = 0.0, 0, False
                for k in range(n):
                    if seq[i + k][6]:  # the next step only restarts: the episode was truncated
                        break
                    ret, m, done = ret + gamma**k * seq[i + k][3], m + 1, bool(seq[i + k][4])
                    if done:
                        break
                truth[key] = (o, a, ret, done, seq[i + m - 1][5], gamma**m)
        b = replay.sample(64, gen)
        for i in range(64):
            if b.mask is not None and not b.mask[i]:
                continue
            key = int(b.obs[i, -1, 0, 0]) if stack > 1 else int(b.obs[i, 0, 0])
            o, a, ret, done, nx, discount = truth[key]  # KeyError: a reset step or an unfinished window was drawn
            want_o, want_n = (o, nx) if stack > 1 else (o[-1], nx[-1])
            np.testing.assert_array_equal(b.obs[i].numpy(), want_o)
            np.testing.assert_array_equal(b.next_obs[i].numpy(), want_n)
            assert (b.actions[i].item(), b.terminated[i].item()) == (a, float(done))
            assert b.rewards[i].item() == pytest.approx(ret, rel=1e-5, abs=1e-5)
            assert b.discount[i].item() == pytest.approx(discount)
            checked += 1
        if prioritized:  # exactly the transitions that can be sampled have a priority
            leaves = replay.tree.get(torch.arange(replay.slots * envs)).view(replay.slots, envs) > 0
            held, oldest = min(replay.written, replay.slots), (replay.pos - min(replay.written, replay.slots) + 1)
            age = (torch.arange(replay.slots) - oldest) % replay.slots
            in_range = (age >= stack - 1) & (age <= held - 1 - n) & (age < held)
            torch.testing.assert_close(leaves, in_range[:, None] & replay.valid)
    assert checked > 1000


def test_sum_tree_samples_in_proportion_to_priorities():
    from scipy.stats import chisquare

    from fovea.agents.sumtree import SumTree

    tree = SumTree(13)  # 16 leaves, 3 of them padding
    priorities = torch.tensor([0.0, 1, 2, 3, 0.5, 8, 0, 4, 1, 1, 2.5, 6, 0.25], dtype=torch.float64)
    tree.set(torch.arange(13), priorities)
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.cat([tree.sample(500, gen) for _ in range(200)]), minlength=13)
    assert counts[priorities == 0].sum() == 0  # a leaf of priority 0 is never drawn
    keep = priorities > 0
    expected = (priorities[keep] / priorities.sum() * counts.sum()).numpy()
    assert chisquare(counts[keep].numpy(), expected).pvalue > 0.01


def test_sum_tree_updates_are_exact():
    from fovea.agents.sumtree import SumTree

    tree, rng = SumTree(1000), np.random.default_rng(0)
    truth = np.zeros(1000)
    for _ in range(50):  # batches with repeated indices, as a minibatch that drew a transition twice
        idx = rng.integers(0, 1000, 64)
        values = rng.exponential(size=64)
        tree.set(torch.as_tensor(idx), torch.as_tensor(values))
        last = {int(i): k for k, i in enumerate(idx)}  # index_put_ keeps one of the repeated writes
        got = tree.get(torch.as_tensor(idx)).numpy()
        for i in last:
            assert got[list(idx).index(i)] in values[idx == i]
            truth[i] = tree.get(torch.tensor([i])).item()
    nodes = tree.nodes
    inner = torch.arange(1, tree.leaves)
    assert torch.equal(nodes[inner], nodes[2 * inner] + nodes[2 * inner + 1])  # every node the sum of its children
    assert tree.total.item() == pytest.approx(truth.sum(), rel=1e-12)
    # find(u) is the leaf whose interval of the cumulative sum holds u
    cum = np.cumsum(tree.get(torch.arange(1000)).numpy())
    u = rng.uniform(0, cum[-1], 2000)
    np.testing.assert_array_equal(tree.find(torch.as_tensor(u)).numpy(), np.searchsorted(cum, u, side="right"))


def test_importance_weights_are_the_formula_and_priorities_follow_td_errors():
    replay = _hand_worked(n_step=1, gamma=0.5, prioritized=True, alpha=0.6, priority_eps=1e-3)
    assert replay.tree.total.item() == 7  # 7 transitions held at the largest priority so far, 1
    leaves = torch.tensor([0, 1, 3, 4, 6, 7, 8])
    errors = torch.tensor([0.5, -2.0, 0.0, 1.0, 3.0, -0.25, 0.1])
    replay.update_priorities(leaves, errors)
    p = (errors.abs().double() + 1e-3) ** 0.6
    torch.testing.assert_close(replay.tree.get(leaves), p)
    assert replay.max_priority.item() == pytest.approx(p.max().item())  # the next new transition gets the largest
    b = replay.sample(256, torch.Generator().manual_seed(1), beta=0.4)
    prob = replay.tree.get(b.index) / p.sum()
    w = (len(replay) * prob) ** -0.4
    torch.testing.assert_close(b.weights, (w / w.max()).float())
    frequency = torch.bincount(b.index, minlength=9)[leaves].double() / 256
    assert torch.allclose(frequency, p / p.sum(), atol=0.05)  # drawn in proportion (stratified: close already)
    replay.add([9], [1.0], [False], np.full((1, 2, 2), 10, np.int64), [False])  # slot 9 becomes a transition
    assert replay.tree.get(torch.tensor([9])).item() == pytest.approx(p.max().item())


def test_priorities_survive_a_checkpoint():
    a = _hand_worked(prioritized=True)
    a.update_priorities(torch.tensor([0, 3]), torch.tensor([2.0, 0.5]))
    b = FrameReplay(100, 1, (2, 2), stack=1, dtype=torch.int64, n_step=3, gamma=0.5, prioritized=True)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.tree.nodes, b.tree.nodes) and a.max_priority == b.max_priority
    with pytest.raises(ValueError, match="no priorities"):
        b.load_state_dict(_hand_worked().state_dict())

"""Experience replay (Mnih et al. 2015) that stores every frame once, in uint8, on the CPU or the GPU, with n-step
returns and proportional prioritised sampling as options.

An Atari observation is a stack of the last 4 frames, so consecutive observations share 3 of them.
SB3's buffer stores whole stacks (``optimize_memory_usage`` drops only the duplicate next
observation): 28 KB per transition. Here each env step writes only its newest frame into a
time-major ring (slot, env); stacks are rebuilt by indexing when a batch is sampled, with the
frames before an episode's first one zeroed, exactly as the environment pads a fresh stack. A
1M-transition Atari buffer then needs 7.07 GB (84 * 84 bytes per frame plus 11 bytes of action,
reward and flags) instead of 28 GB.

Transitions never mix episodes: the step that restarts a finished game (``reset``) is stored as
the first frame of the next episode, and no transition leads into it.

Sampling draws (slot, env) pairs uniformly and redraws those that are not transitions (a reset step, a
restart). On the CPU it redraws until all are valid, which reads the device back once per round; on
CUDA (``sync_free``) it draws a fixed number of candidates per transition on the device, keeps the
first valid one, and returns a mask that is False where none was (probability p^8 for a fraction p of
invalid slots), so that the loss can leave those out without the host ever looking.

n-step returns (``n_step`` > 1; Sutton 1988, as in Rainbow and the Atari 100k agents): a sampled transition at t
carries R = sum_{k<m} gamma^k r_{t+k}, the observation at t + m to bootstrap from with gamma^m, and whether step
t + m - 1 terminated, where m = n unless the episode ended sooner: a termination at t + k (no bootstrap) or a
truncation (the next step only restarts the game: bootstrap from the truncated episode's last observation) stops
it at m = k + 1. The window is read from the ring by indexing, on the device, without a host sync; the newest
n - 1 steps are not sampled until their window has been written (as Dopamine's replay does).

Prioritised replay (``prioritized``; Schaul et al., ICLR 2016, proportional variant): a ``SumTree`` over the
(slot, env) leaves holds p_i^alpha for each transition that can be sampled (0 for the others); a new transition
gets the largest priority seen so far; ``sample(beta=...)`` draws i with P(i) = p_i^alpha / sum_j p_j^alpha and
returns the importance weights w_i = (N P(i))^-beta / max_batch w; ``update_priorities`` sets
p_i = (|delta_i| + eps)^alpha after the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fovea.agents.sumtree import SumTree


@dataclass
class Batch:
    """A minibatch of transitions; observations are uint8 stacks (B, stack, H, W) (or (B, *shape))."""

    obs: torch.Tensor
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32
    terminated: torch.Tensor  # (B,) float32: 1 where the episode ended (no bootstrap); truncation bootstraps
    next_obs: torch.Tensor
    mask: torch.Tensor | None = None  # (B,) bool: False for a draw that is not a transition (sync-free sampling)
    discount: torch.Tensor | None = None  # (B,) gamma^m of an m-step return (None: one step, gamma)
    weights: torch.Tensor | None = None  # (B,) importance weights of prioritised sampling (None: uniform)
    index: torch.Tensor | None = None  # (B,) leaves drawn by prioritised sampling, for update_priorities


class FrameReplay:
    """A ring of ``capacity`` transitions from ``num_envs`` parallel envs, each frame stored once.

    Args:
        capacity: transitions held (split evenly over the envs).
        num_envs: parallel envs writing one transition each per step.
        frame_shape: shape of one frame, e.g. (84, 84); a whole observation when ``stack == 1``.
        stack: frames per observation (the newest last along dim 1).
        dtype: storage dtype of frames (uint8 for pixels, float32 for state vectors).
        device: where the ring lives (sampling happens there too).
        sync_free: sample without reading the device back, masking what is still invalid after ``REDRAWS``
            draws (the generator then lives on ``device``); default: on CUDA only.
        n_step: steps summed into each sampled return (1: the plain one-step transition).
        gamma: the discount of the n-step sums (unused for ``n_step == 1``).
        prioritized: sample in proportion to priorities (a sum tree) instead of uniformly.
        alpha: priority exponent (p^alpha); 0 is uniform.
        priority_eps: added to |TD error| so that no transition falls to priority 0.
    """

    REDRAWS = 8  # sync-free sampling: candidate draws per transition

    def __init__(self, capacity: int, num_envs: int, frame_shape: tuple[int, ...], *, stack: int = 4,
                 dtype: torch.dtype = torch.uint8, device: torch.device | str = "cpu",
                 sync_free: bool | None = None, n_step: int = 1, gamma: float = 0.99, prioritized: bool = False,
                 alpha: float = 0.6, priority_eps: float = 1e-6):  # fmt: skip
        slots = capacity // num_envs
        if n_step < 1 or not 0 <= gamma <= 1 or alpha < 0 or priority_eps < 0:
            raise ValueError(f"FrameReplay needs n_step >= 1, 0 <= gamma <= 1, alpha >= 0 and priority_eps >= 0; got "
                             f"{n_step}, {gamma}, {alpha}, {priority_eps}")  # fmt: skip
        if slots < stack + n_step + 1:
            raise ValueError(f"replay capacity {capacity} is too small for {num_envs} envs and {stack}-frame stacks")
        self.slots, self.num_envs, self.stack, self.device = slots, num_envs, stack, torch.device(device)
        self.sync_free = self.device.type == "cuda" if sync_free is None else sync_free
        z = dict(device=self.device)
        # never read before written, so left uninitialised: a 7 GB ring costs nothing until it fills
        self.frames = torch.empty((slots, num_envs, *frame_shape), dtype=dtype, **z)
        self.actions = torch.zeros((slots, num_envs), dtype=torch.int32, **z)
        self.rewards = torch.zeros((slots, num_envs), dtype=torch.float32, **z)
        self.terminated = torch.zeros((slots, num_envs), dtype=torch.bool, **z)
        self.first = torch.zeros((slots, num_envs), dtype=torch.bool, **z)  # slot holds an episode's first frame
        self.valid = torch.zeros((slots, num_envs), dtype=torch.bool, **z)  # slot -> slot + 1 is a transition
        self.pos = 0  # the slot holding the newest frame
        self.written = 0  # slots written so far (saturates at ``slots``)
        self.n_step, self.gamma, self.alpha, self.priority_eps = n_step, gamma, alpha, priority_eps
        self.tree = SumTree(slots * num_envs, self.device) if prioritized else None  # leaf = slot * num_envs + env
        self.max_priority = torch.ones((), dtype=torch.float64, device=self.device)  # of p^alpha; new ones get it

    @property
    def prioritized(self) -> bool:
        return self.tree is not None

    def __len__(self) -> int:
        """Transitions that can be sampled."""
        return max(0, min(self.written, self.slots) - self.stack - self.n_step + 1) * self.num_envs

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.frames, self.actions, self.rewards, self.terminated,
                                                          self.first, self.valid))  # fmt: skip

    _TENSORS = ("frames", "actions", "rewards", "terminated", "first", "valid")

    def state_dict(self) -> dict:
        """Everything the ring holds, for a checkpoint (``--save-replay``): the slots written so far (slots
        ``0 .. written-1``, all of them once the ring is full), so a young buffer makes a small checkpoint and
        never-written memory is not saved."""
        n = min(self.written, self.slots)
        state = {**{k: getattr(self, k)[:n] for k in self._TENSORS}, "pos": self.pos, "written": self.written}
        if self.tree is not None:
            state.update(priorities=self.tree.nodes, max_priority=self.max_priority)
        return state

    def load_state_dict(self, state: dict) -> None:
        written = int(state["written"])
        for k in self._TENSORS:
            mine, theirs = getattr(self, k), state[k]
            n = theirs.shape[0] if theirs.dim() else -1  # the written slots (or, from older checkpoints, all)
            if (
                tuple(theirs.shape[1:]) != tuple(mine.shape[1:])
                or theirs.dtype != mine.dtype
                or n not in (min(written, self.slots), self.slots)
            ):
                raise ValueError(f"replay {k} is {tuple(theirs.shape)} {theirs.dtype} with {written} slots written, "
                                 f"expected {tuple(mine.shape)} {mine.dtype}")  # fmt: skip
            mine[:n].copy_(theirs)
        if self.tree is not None:
            if "priorities" not in state:
                raise ValueError("the checkpoint's replay has no priorities; resume it with prioritized = false")
            self.tree.load_state_dict({"nodes": state["priorities"]})
            self.max_priority.copy_(state["max_priority"])
        self.pos, self.written = int(state["pos"]), written

    def _newest(self, obs: torch.Tensor | np.ndarray) -> torch.Tensor:
        obs = torch.as_tensor(obs, device=self.device)
        return obs[:, -1] if self.stack > 1 else obs

    def start(self, obs: torch.Tensor | np.ndarray) -> None:
        """Write the first observations after ``env.reset()``."""
        self.frames[self.pos] = self._newest(obs)
        self.first[self.pos] = True
        self.valid[self.pos] = False
        self.valid[(self.pos - 1) % self.slots] = False  # a restart mid-stream: nothing leads into it
        self.written = max(self.written, 1)
        self._set_priorities([(self.pos - 1) % self.slots], [])

    def add(self, actions, rewards, terminated, next_obs, reset) -> None:
        """Record one vector step: the action taken in the newest slot, its reward and termination, then
        write ``next_obs``. ``reset`` marks envs whose step only restarted a finished game: their
        ``next_obs`` starts a new episode and the step is not a transition."""
        t = torch.as_tensor
        reset = t(reset, device=self.device, dtype=torch.bool)
        self.actions[self.pos] = t(actions, device=self.device).to(torch.int32)
        self.rewards[self.pos] = t(rewards, device=self.device, dtype=torch.float32)
        self.terminated[self.pos] = t(terminated, device=self.device, dtype=torch.bool)
        self.valid[self.pos] = ~reset
        self.pos = (self.pos + 1) % self.slots
        self.frames[self.pos] = self._newest(next_obs)
        self.first[self.pos] = reset
        self.valid[self.pos] = False  # no next frame yet
        self.written = min(self.written + 1, self.slots)
        if self.tree is not None:
            cleared = [self.pos]  # overwritten: the newest frame, no transition yet
            if self.written == self.slots:  # the oldest slots lost the frames before them: no longer sampled
                cleared.append((self.pos + self.stack - 1) % self.slots)
            complete = [(self.pos - self.n_step) % self.slots] if self.written > self.stack + self.n_step - 1 else []
            self._set_priorities(cleared, complete)  # complete: that slot's n-step window is written now

    def _set_priorities(self, cleared: list[int], complete: list[int]) -> None:
        """In one tree update: priority 0 for every env of the ``cleared`` slots, and the largest priority so far
        for the envs of the ``complete`` slots whose step is a transition (0 for a reset step)."""
        if self.tree is None:
            return
        slots = torch.tensor(cleared + complete, dtype=torch.long, device=self.device)
        envs = torch.arange(self.num_envs, device=self.device)
        leaves = (slots[:, None] * self.num_envs + envs).view(-1)
        p = self.max_priority * self.valid[slots[len(cleared) :]]  # (complete, envs)
        p = torch.cat([torch.zeros(len(cleared), self.num_envs, dtype=p.dtype, device=self.device), p])
        self.tree.set(leaves, p.view(-1))

    def _stack(self, slot: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
        """Observations ending at ``slot``: (B, stack, *frame), frames before an episode start zeroed."""
        if self.stack == 1:
            return self.frames[slot, env]
        back = torch.arange(self.stack - 1, -1, -1, device=self.device)  # stack-1 .. 0 frames back
        idx = (slot[:, None] - back[None, :]) % self.slots  # (B, stack), oldest first
        frames = self.frames[idx, env[:, None]]  # (B, stack, H, W)
        # frame k is kept unless an episode starts after it: a `first` at a newer position in the stack
        starts = self.first[idx[:, 1:], env[:, None]]  # (B, stack-1): first flags of frames 1..stack-1
        cut = starts.flip(1).cumsum(1).flip(1) > 0  # (B, stack-1): a start at or after position k+1
        keep = torch.cat([~cut, torch.ones_like(cut[:, :1])], dim=1)  # the newest frame is always kept
        return frames * keep.view(*keep.shape, *([1] * (frames.dim() - 2))).to(frames.dtype)

    def sample(self, batch_size: int, generator: torch.Generator | None = None, beta: float = 1.0) -> Batch:
        """``batch_size`` transitions drawn (with replacement) uniformly, or in proportion to their priorities with
        importance weights of exponent ``beta``, from those held."""
        if self.tree is None:
            return self.gather(*self.draw(batch_size, generator))
        leaf, mask = self._draw_prioritized(batch_size, generator)
        batch = self.gather(leaf // self.num_envs, leaf % self.num_envs, mask)
        batch.index, batch.weights = leaf, self.importance_weights(self.tree.get(leaf), beta, mask)
        return batch

    def importance_weights(self, priority: torch.Tensor, beta: float, mask: torch.Tensor | None = None
                           ) -> torch.Tensor:  # fmt: skip
        """w_i = (N P(i))^-beta / max_j w_j over the batch's kept draws (Schaul et al. 2016, Algorithm 1), P(i) =
        ``priority`` / total and N the transitions held; float32, 0 where ``mask`` is False."""
        keep = priority > 0 if mask is None else mask & (priority > 0)
        prob = torch.where(keep, priority / self.tree.total, 1.0)
        w = torch.where(keep, (len(self) * prob) ** -beta, 0.0)
        return (w / w.max().clamp_min(torch.finfo(w.dtype).tiny)).float()

    def update_priorities(self, index: torch.Tensor, td_error: torch.Tensor, mask: torch.Tensor | None = None
                          ) -> None:  # fmt: skip
        """Set the priorities of the sampled leaves ``index`` to (|``td_error``| + eps)^alpha (no host sync); draws
        left out by ``mask`` and leaves that are no longer transitions keep theirs."""
        p = (td_error.detach().abs().double() + self.priority_eps) ** self.alpha
        keep = self.tree.get(index) > 0
        if mask is not None:
            keep &= mask
        self.tree.set(index, torch.where(keep, p, self.tree.get(index)))
        torch.maximum(self.max_priority, torch.where(keep, p, 0).max(), out=self.max_priority)

    def _held(self) -> tuple[int, int]:
        """(slots written, the oldest slot); refuses to go on while nothing can be sampled."""
        n = min(self.written, self.slots)
        if n <= self.stack + self.n_step:
            raise ValueError(f"the replay holds {len(self)} transitions; it cannot sample yet")
        return n, (self.pos - n + 1) % self.slots

    def _draw_prioritized(self, batch_size: int, generator: torch.Generator | None):
        """Leaves drawn from the sum tree, and the mask of those that are transitions (None when all are, on the
        checked path; a leaf of priority 0 is drawn only by rounding at the top of the total)."""
        self._held()
        gen_device = generator.device if generator is not None else self.device
        if gen_device == self.device:
            leaf = self.tree.sample(batch_size, generator)
        else:  # a CPU generator for a ring elsewhere: the uniform draws move over
            r = torch.rand(batch_size, generator=generator, dtype=torch.float64).to(self.device)
            u = (torch.arange(batch_size, device=self.device, dtype=torch.float64) + r) / batch_size * self.tree.total
            leaf = self.tree.find(u).clamp_max(self.tree.size - 1)
        mask = self.tree.get(leaf) > 0
        if not self.sync_free and bool(mask.all()):
            mask = None
        return leaf, mask

    def draw(self, batch_size: int, generator: torch.Generator | None = None):
        """(slot, env) indices of ``batch_size`` transitions drawn uniformly, and the mask of those that are (None:
        all are)."""
        n, oldest = self._held()
        # Slots whose whole stack is still in the ring and whose n-step window is written: ages stack-1 .. n-1-n_step.
        if self.sync_free:
            return self._draw_on_device(batch_size, generator, n, oldest)
        slot = torch.empty(batch_size, dtype=torch.long, device=self.device)
        env = torch.empty(batch_size, dtype=torch.long, device=self.device)
        todo = torch.ones(batch_size, dtype=torch.bool, device=self.device)
        for _ in range(64):  # drawn until valid
            k = int(todo.sum())
            if k == 0:
                break
            age = torch.randint(self.stack - 1, n - self.n_step, (k,), generator=generator).to(self.device)
            slot[todo] = (oldest + age) % self.slots
            env[todo] = torch.randint(0, self.num_envs, (k,), generator=generator).to(self.device)
            todo = ~self.valid[slot, env]
        else:
            raise RuntimeError("replay sampling found no valid transition in 64 draws")
        return slot, env, None

    def _draw_on_device(self, batch_size: int, generator: torch.Generator | None, n: int, oldest: int):
        """REDRAWS candidates per transition at once; the first valid one is kept, the mask tells if there was one."""
        shape, dev = (self.REDRAWS, batch_size), self.device
        age = torch.randint(self.stack - 1, n - self.n_step, shape, generator=generator, device=dev)
        slot = (oldest + age) % self.slots
        env = torch.randint(0, self.num_envs, shape, generator=generator, device=dev)  # (R, B)
        ok = self.valid[slot, env]  # (R, B)
        first = ok.to(torch.uint8).argmax(0, keepdim=True)  # (1, B): the first valid candidate (0 if none is)
        return slot.gather(0, first).squeeze(0), env.gather(0, first).squeeze(0), ok.any(0)

    def gather(self, slot: torch.Tensor, env: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
        """The transitions at (slot, env): stacks rebuilt from the ring, n-step returns summed over their window."""
        if self.n_step == 1:
            nxt = (slot + 1) % self.slots
            return Batch(
                obs=self._stack(slot, env),
                actions=self.actions[slot, env].long(),
                rewards=self.rewards[slot, env],
                terminated=self.terminated[slot, env].float(),
                next_obs=self._stack(nxt, env),
                mask=mask,
            )
        k = torch.arange(self.n_step, device=self.device)
        idx, e = (slot[:, None] + k) % self.slots, env[:, None]  # (B, n): the window's slots
        valid, term = self.valid[idx, e], self.terminated[idx, e]
        # step k counts while every step before it went on in the same episode (a transition, not terminated)
        # and it is a transition itself; a truncation shows as the next step being a restart (not valid)
        went_on = (valid & ~term)[:, :-1].long().cumprod(1).bool()
        counted = torch.cat([torch.ones_like(valid[:, :1]), went_on], 1) & valid  # (B, n)
        m = counted.sum(1).clamp_min(1)  # steps summed (0 only for a masked-out draw)
        powers = self.gamma ** k.to(torch.float32)
        returns = (self.rewards[idx, e] * powers * counted).sum(1)
        return Batch(
            obs=self._stack(slot, env),
            actions=self.actions[slot, env].long(),
            rewards=returns,
            terminated=(term & counted).any(1).float(),
            next_obs=self._stack((slot + m) % self.slots, env),
            mask=mask,
            discount=self.gamma ** m.to(torch.float32),
        )

"""Experience replay (Mnih et al. 2015) that stores every frame once, in uint8, on the CPU or the GPU.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    """A minibatch of transitions; observations are uint8 stacks (B, stack, H, W) (or (B, *shape))."""

    obs: torch.Tensor
    actions: torch.Tensor  # (B,) int64
    rewards: torch.Tensor  # (B,) float32
    terminated: torch.Tensor  # (B,) float32: 1 where the episode ended (no bootstrap); truncation bootstraps
    next_obs: torch.Tensor
    mask: torch.Tensor | None = None  # (B,) bool: False for a draw that is not a transition (sync-free sampling)


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
    """

    REDRAWS = 8  # sync-free sampling: candidate draws per transition

    def __init__(self, capacity: int, num_envs: int, frame_shape: tuple[int, ...], *, stack: int = 4,
                 dtype: torch.dtype = torch.uint8, device: torch.device | str = "cpu",
                 sync_free: bool | None = None):  # fmt: skip
        slots = capacity // num_envs
        if slots < stack + 2:
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

    def __len__(self) -> int:
        """Transitions that can be sampled."""
        return max(0, min(self.written, self.slots) - self.stack) * self.num_envs

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
        return {**{k: getattr(self, k)[:n] for k in self._TENSORS}, "pos": self.pos, "written": self.written}

    def load_state_dict(self, state: dict) -> None:
        written = int(state["written"])
        for k in self._TENSORS:
            mine, theirs = getattr(self, k), state[k]
            n = theirs.shape[0] if theirs.dim() else -1  # the written slots (or, from older checkpoints, all)
            if tuple(theirs.shape[1:]) != tuple(mine.shape[1:]) or theirs.dtype != mine.dtype or n not in (
                min(written, self.slots), self.slots
            ):
                raise ValueError(f"replay {k} is {tuple(theirs.shape)} {theirs.dtype} with {written} slots written, "
                                 f"expected {tuple(mine.shape)} {mine.dtype}")  # fmt: skip
            mine[:n].copy_(theirs)
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

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) from those held."""
        return self.gather(*self.draw(batch_size, generator))

    def draw(self, batch_size: int, generator: torch.Generator | None = None):
        """(slot, env) indices of ``batch_size`` transitions, and the mask of those that are (None: all are)."""
        n = min(self.written, self.slots)
        if n <= self.stack + 1:
            raise ValueError(f"the replay holds {len(self)} transitions; it cannot sample yet")
        oldest = (self.pos - n + 1) % self.slots
        # Slots whose whole stack is still in the ring and whose next frame exists: ages stack-1 .. n-2.
        if self.sync_free:
            return self._draw_on_device(batch_size, generator, n, oldest)
        slot = torch.empty(batch_size, dtype=torch.long, device=self.device)
        env = torch.empty(batch_size, dtype=torch.long, device=self.device)
        todo = torch.ones(batch_size, dtype=torch.bool, device=self.device)
        for _ in range(64):  # drawn until valid
            k = int(todo.sum())
            if k == 0:
                break
            age = torch.randint(self.stack - 1, n - 1, (k,), generator=generator).to(self.device)
            slot[todo] = (oldest + age) % self.slots
            env[todo] = torch.randint(0, self.num_envs, (k,), generator=generator).to(self.device)
            todo = ~self.valid[slot, env]
        else:
            raise RuntimeError("replay sampling found no valid transition in 64 draws")
        return slot, env, None

    def _draw_on_device(self, batch_size: int, generator: torch.Generator | None, n: int, oldest: int):
        """REDRAWS candidates per transition at once; the first valid one is kept, the mask tells if there was one."""
        shape, dev = (self.REDRAWS, batch_size), self.device
        slot = (oldest + torch.randint(self.stack - 1, n - 1, shape, generator=generator, device=dev)) % self.slots
        env = torch.randint(0, self.num_envs, shape, generator=generator, device=dev)  # (R, B)
        ok = self.valid[slot, env]  # (R, B)
        first = ok.to(torch.uint8).argmax(0, keepdim=True)  # (1, B): the first valid candidate (0 if none is)
        return slot.gather(0, first).squeeze(0), env.gather(0, first).squeeze(0), ok.any(0)

    def gather(self, slot: torch.Tensor, env: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
        """The transitions at (slot, env): stacks rebuilt from the ring."""
        nxt = (slot + 1) % self.slots
        return Batch(
            obs=self._stack(slot, env),
            actions=self.actions[slot, env].long(),
            rewards=self.rewards[slot, env],
            terminated=self.terminated[slot, env].float(),
            next_obs=self._stack(nxt, env),
            mask=mask,
        )

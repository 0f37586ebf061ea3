"""RecurrentCore: an LSTM or GRU over time whose state is reset where an episode ends (notes, ch. 10).

Batch-first, like every other tensor in Fovea. Agents unroll it over rollouts that cross episode
boundaries; the done mask says where, and the state is zeroed there so no memory leaks from one
episode into the next (the convention of CleanRL's ``ppo_atari_lstm.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from fovea.backbones.registry import BackboneError, register

State = tuple[torch.Tensor, ...]  # LSTM: (h, c); GRU: (h,); each (num_layers, B, hidden_size)


@register("recurrent", kind="sequence", tiny={"hidden_size": 8})
class RecurrentCore(nn.Module):
    """LSTM or GRU over (B, T, F) sequences, its state reset wherever the done mask marks a new episode.

    Args:
        in_shape: (F,), the size of each step's input (e.g. a CNN's ``out_features``).
        hidden_size: size of the state and of each output step; ``out_features == hidden_size``.
        cell: ``lstm`` or ``gru``.
        num_layers: stacked recurrent layers.
    """

    def __init__(self, in_shape: tuple[int, ...], hidden_size: int = 256, cell: str = "lstm", num_layers: int = 1):
        super().__init__()
        if len(in_shape) != 1:
            raise BackboneError(f"recurrent takes feature vectors, in_shape=(F,); got {tuple(in_shape)}")
        if cell not in ("lstm", "gru"):
            raise BackboneError(f"recurrent cell must be 'lstm' or 'gru'; got {cell!r}")
        if hidden_size < 1 or num_layers < 1:
            raise BackboneError(
                f"recurrent needs hidden_size >= 1 and num_layers >= 1; got {hidden_size}, {num_layers}"
            )
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(in_shape[0], hidden_size, num_layers=num_layers, batch_first=True)
        self.cell, self.num_layers, self.out_features = cell, num_layers, hidden_size

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """The all-zero state of a fresh episode."""
        h = torch.zeros(self.num_layers, batch_size, self.out_features, device=device)
        return (h, torch.zeros_like(h)) if self.cell == "lstm" else (h,)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, new = self.rnn(x, state if self.cell == "lstm" else state[0])
        return out, (new if self.cell == "lstm" else (new,))

    def forward(
        self, x: torch.Tensor, state: State | None = None, done: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Unroll over time.

        Args:
            x: (B, T, F) inputs.
            state: the state before step 0 (zeros when None).
            done: (B, T) mask; ``done[b, t]`` true means the episode ended before step t, so the
                state is reset to zeros before ``x[b, t]`` is read.

        Returns:
            (B, T, hidden_size) outputs and the state after the last step.
        """
        if x.dim() != 3:
            raise BackboneError(f"recurrent takes (B, T, F) inputs; got shape {tuple(x.shape)}")
        if state is None:
            state = self.initial_state(x.shape[0], x.device)
        if done is None:
            return self._run(x, state)
        if done.shape != x.shape[:2]:
            raise BackboneError(
                f"recurrent: done must be (B, T) = {tuple(x.shape[:2])} like x; got {tuple(done.shape)}"
            )
        keep = (~done.to(torch.bool)).to(x.dtype)  # (B, T)
        # Cut the sequence where any episode starts and run cuDNN over each piece: one host sync per
        # call rather than one per step.
        cuts = [0, *(torch.nonzero(done[:, 1:].any(0)).flatten() + 1).tolist(), x.shape[1]]
        outs = []
        for start, end in zip(cuts[:-1], cuts[1:], strict=True):
            mask = keep[:, start].view(1, -1, 1)  # (1, B, 1)
            out, state = self._run(x[:, start:end], tuple(s * mask for s in state))
            outs.append(out)
        return torch.cat(outs, dim=1), state

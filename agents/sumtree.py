"""A sum tree on the device: proportional sampling and priority updates for a batch at once, no host sync.

Schaul et al., "Prioritized Experience Replay", ICLR 2016, section 3.3 and appendix B.2.1: each leaf holds a
priority p_i (already raised to alpha by the caller); each inner node holds the sum of its two children, so the
root is the total and a prefix sum u in [0, total) leads from the root to the leaf i with
sum_{j<i} p_j <= u < sum_{j<=i} p_j in log2(leaves) steps. A batch descends together, one gather per level.

The nodes are float64 so that sums of many small priorities stay exact to the last bit that matters: every inner
node is computed from its two children (never by adding a difference), so the tree is always consistent.
"""

from __future__ import annotations

import torch


class SumTree:
    """A complete binary tree over ``size`` leaves (rounded up to a power of two; the extra leaves hold 0).

    Node 1 is the root; node k's children are 2k and 2k + 1; leaf i is node ``leaves + i``.

    Args:
        size: number of leaves that can hold a priority.
        device: where the nodes live (sampling and updates happen there).
    """

    def __init__(self, size: int, device: torch.device | str = "cpu"):
        if size < 1:
            raise ValueError(f"a sum tree needs at least one leaf, got {size}")
        self.size = size
        self.depth = max(1, (size - 1).bit_length())  # levels below the root
        self.leaves = 1 << self.depth
        self.nodes = torch.zeros(2 * self.leaves, dtype=torch.float64, device=device)  # nodes[0] is unused

    @property
    def total(self) -> torch.Tensor:
        """The sum of all priorities (a 0-dim tensor on the device)."""
        return self.nodes[1]

    def get(self, index: torch.Tensor) -> torch.Tensor:
        """The priorities of leaves ``index``."""
        return self.nodes[index + self.leaves]

    def set(self, index: torch.Tensor, priority: torch.Tensor) -> None:
        """Set leaves ``index`` to ``priority`` and recompute their ancestors. Repeated indices are allowed: the
        last value given for a leaf may win or not (as ``index_put_`` decides), but every ancestor is recomputed
        from its children afterwards, so the tree stays a sum tree either way."""
        node = index.long() + self.leaves
        self.nodes[node] = priority.to(self.nodes.dtype)
        for _ in range(self.depth):
            node = node // 2
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, prefix: torch.Tensor) -> torch.Tensor:
        """For each prefix sum u in [0, total), the leaf i whose interval [sum_{j<i} p_j, sum_{j<=i} p_j) holds u
        (one int64 index per u)."""
        u = prefix.to(self.nodes.dtype).clone()
        node = torch.ones_like(u, dtype=torch.long)
        for _ in range(self.depth):
            left = self.nodes[2 * node]
            right = u >= left
            u = torch.where(right, u - left, u)
            node = 2 * node + right.long()
        return node - self.leaves

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` leaves drawn with probability p_i / total, stratified as in Schaul et al. (one uniform draw in
        each of n equal slices of [0, total)), all on the device."""
        dev = self.nodes.device
        r = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
        u = (torch.arange(n, device=dev, dtype=torch.float64) + r) / n * self.total
        return self.find(u).clamp_max(self.size - 1)

    def state_dict(self) -> dict:
        return {"nodes": self.nodes}

    def load_state_dict(self, state: dict) -> None:
        nodes = state["nodes"]
        if nodes.shape != self.nodes.shape:
            raise ValueError(f"sum tree of {tuple(nodes.shape)} nodes, expected {tuple(self.nodes.shape)}")
        self.nodes.copy_(nodes)

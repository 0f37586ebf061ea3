"""DrQ's random shift and the intensity noise: each observation moved by its own offset, as replicate-padding by 4
and cropping would, its dtype and device kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fovea.agents.augment import intensity, random_shift


def _crops(x: torch.Tensor, pad: int) -> dict[tuple[int, int], torch.Tensor]:
    """Every crop of ``x`` (C, H, W) replicate-padded by ``pad``, by its (dy, dx) shift."""
    padded = F.pad(x[None].float(), (pad, pad, pad, pad), mode="replicate")[0]
    h, w = x.shape[-2:]
    return {(dy, dx): padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
            for dy in range(-pad, pad + 1) for dx in range(-pad, pad + 1)}  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_each_observation_is_a_replicate_padded_crop_with_its_own_shift(dtype):
    gen = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (64, 4, 12, 10), generator=gen).to(dtype)  # a batch of 4-frame stacks
    out = random_shift(obs, 4, torch.Generator().manual_seed(1))
    assert out.dtype == dtype and out.shape == obs.shape
    shifts = []
    for x, y in zip(obs, out, strict=True):
        hits = [s for s, crop in _crops(x, 4).items() if torch.equal(crop, y.float())]
        assert len(hits) == 1, hits  # one shift, shared by the frames of the stack
        shifts.append(hits[0])
    assert len(set(shifts)) > 30  # each image draws its own shift (81 possible)
    assert {dy for dy, _ in shifts} == set(range(-4, 5)) and {dx for _, dx in shifts} == set(range(-4, 5))


def test_shift_of_zero_pad_and_determinism():
    obs = torch.randint(0, 256, (3, 2, 8, 8), dtype=torch.uint8)
    assert random_shift(obs, 0) is obs
    a = random_shift(obs, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, random_shift(obs, 4, torch.Generator().manual_seed(5)))


def test_intensity_scales_each_observation_by_one_clipped_factor():
    obs = torch.full((500, 2, 3, 3), 100, dtype=torch.uint8)
    out = intensity(obs, 0.05, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    factor = out[:, 0, 0, 0] / 100
    torch.testing.assert_close(out, factor.view(-1, 1, 1, 1).expand(-1, 2, 3, 3) * 100)  # one factor per observation
    assert factor.min() >= 0.9 - 1e-6 and factor.max() <= 1.1 + 1e-6 and factor.std() > 0.03

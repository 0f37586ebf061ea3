"""The discretised logistic likelihood of the 8-bit VAE in its tails: every level's log-probability against
a float64 reference, and a finite, nonzero gradient for every level however far it is from the mean."""

from __future__ import annotations

import pytest
import torch

from fovea.generative.autoencoder import discretized_logistic_logp

MAX = 255
LEVELS = torch.arange(MAX + 1, dtype=torch.uint8)
SCALES = (0.004, 0.01, 0.02, 0.05, 0.2, 1.0)
MEANS = (-0.4987, -0.3141, -0.0123, 0.2718, 0.4911)  # centred pixels span [-0.5, 0.5]; none on a bin centre


def reference_logp(loc, scale) -> torch.Tensor:
    """log P(level) for all 256 levels in float64 (``loc`` and ``scale``: numbers, or float64 tensors with one
    entry per level). Each bin's mass is taken on the side of the mean where the CDF is small
    (sigmoid(hi) - sigmoid(lo) = sigmoid(-lo) - sigmoid(-hi)), so nothing cancels down to 0."""
    x = LEVELS.double() / MAX - 0.5
    half = 0.5 / MAX
    edge = torch.full_like(x, torch.inf)
    hi = torch.where(LEVELS == MAX, edge, (x - loc + half) / scale)  # the edge bins take the tails below
    lo = torch.where(LEVELS == 0, -edge, (x - loc - half) / scale)  # level 0 and above level 255
    above = x > loc
    mass = torch.where(above, torch.sigmoid(-lo) - torch.sigmoid(-hi), torch.sigmoid(hi) - torch.sigmoid(lo))
    return mass.log()


def _logp(loc: float, scale: float, requires_grad: bool = False):
    loc_t = torch.full((MAX + 1,), loc, requires_grad=requires_grad)
    log_scale = torch.full((MAX + 1,), scale, dtype=torch.float64).log().float().requires_grad_(requires_grad)
    return discretized_logistic_logp(LEVELS, loc_t, log_scale, MAX), loc_t, log_scale


@pytest.mark.parametrize("scale", SCALES)
def test_every_level_matches_the_float64_likelihood(scale):
    for loc in MEANS:
        ref = reference_logp(loc, scale)
        got = _logp(loc, scale)[0].double()
        assert torch.isfinite(ref).all() and got.dtype == torch.float64
        err = (got - ref).abs() / ref.abs().clamp(min=1e-2)
        worst = int(err.argmax())
        assert err.max() < 1e-3, f"loc {loc}, scale {scale}: level {worst} gives {got[worst]:.4f}, not {ref[worst]:.4f}"


@pytest.mark.parametrize("scale", SCALES)
def test_every_level_has_a_finite_nonzero_gradient(scale):
    """Far from the mean the bin's mass is tiny but not zero: the gradient must still pull the mean toward
    the pixel and change the scale, as the float64 gradient does."""
    for loc in MEANS:
        logp, loc_t, log_scale = _logp(loc, scale, requires_grad=True)
        grads = torch.autograd.grad(logp.sum(), (loc_t, log_scale))
        loc64 = torch.full((MAX + 1,), loc, dtype=torch.float64, requires_grad=True)  # one per level
        log_scale64 = torch.full((MAX + 1,), scale, dtype=torch.float64).log().requires_grad_()
        refs = torch.autograd.grad(reference_logp(loc64, log_scale64.exp()).sum(), (loc64, log_scale64))
        for name, g, want in zip(("loc", "log_scale"), grads, refs, strict=True):
            bad = (~torch.isfinite(g) | (g == 0)).nonzero().flatten().tolist()
            assert not bad, f"loc {loc}, scale {scale}: no gradient w.r.t. {name} at levels {bad[:10]} ({len(bad)})"
            err = (g.double() - want).abs() / want.abs().clamp(min=1)
            assert err.max() < 1e-3, f"loc {loc}, scale {scale}: d/d{name} at level {int(err.argmax())}"


def test_the_tail_log_probability_keeps_falling():
    """At the decoder's starting scale (0.02) with the mean at -0.4, pixels 0.3, 0.4 and 0.8 above the mean have
    log P of about -16.6, -21.5 and -41.5 nats; a floor on the bin's mass would give the last two the same
    value (-27.6 with a 1e-12 floor) and no gradient."""
    logp = _logp(-0.4, 0.02)[0]
    ref = reference_logp(-0.4, 0.02)
    for level in (102, 127, 229):
        assert logp[level].item() == pytest.approx(ref[level].item(), rel=1e-4), level
    assert logp[229] < logp[127] - 19

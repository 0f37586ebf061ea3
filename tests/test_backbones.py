"""The backbone registry contract: every registered backbone, in a tiny variant, is tested the day it is registered."""

from __future__ import annotations

import pytest
import torch

from fovea import backbones
from fovea.backbones.rnn import RecurrentCore

SHAPES = [(4, 84, 84), (3, 32, 32), (1, 8, 8)]


def example_input(name: str, batch: int = 3) -> tuple[torch.nn.Module, torch.Tensor | tuple[torch.Tensor, ...]]:
    e = backbones.entry(name)
    if e.kind == "denoiser":  # (images, timesteps) -> images
        net, x = backbones.build(name, (3, 40, 40), **e.tiny), (torch.randn(batch, 3, 40, 40), torch.arange(batch))
    elif e.kind == "image":
        net, x = backbones.build(name, (3, 40, 40), **e.tiny), torch.randn(batch, 3, 40, 40)
    elif e.kind == "vector":
        net, x = backbones.build(name, (2, 5), **e.tiny), torch.randn(batch, 2, 5)
    elif e.kind == "sequence":
        net, x = backbones.build(name, (6,), **e.tiny), torch.randn(batch, 4, 6)
    else:  # decoder
        net, x = backbones.build(name, (6,), **e.tiny), torch.randn(batch, 6)
    return net, x


def output(net: torch.nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    y = net(*x) if isinstance(x, tuple) else net(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("name", backbones.names())
def test_registry_contract(name):
    torch.manual_seed(0)
    net, x = example_input(name)
    y = output(net, x)
    kind = backbones.entry(name).kind
    if kind in ("decoder", "denoiser"):
        assert y.shape == (len(x[0]) if kind == "denoiser" else len(x), *net.out_shape)
    elif kind == "sequence":
        assert y.shape == (x.shape[0], x.shape[1], net.out_features)
    else:
        assert y.shape == (x.shape[0], net.out_features)
    assert torch.isfinite(y).all()
    (y.square().mean()).backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}.{pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} got an all-zero gradient"
    # state_dict round trip: a fresh instance with the loaded state computes the same outputs
    torch.manual_seed(1)
    twin, _ = example_input(name)
    twin.load_state_dict(net.state_dict())
    net.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(output(net, x), output(twin, x))


@pytest.mark.parametrize("name", [n for n in backbones.names() if backbones.entry(n).kind == "image"])
@pytest.mark.parametrize("shape", SHAPES)
def test_image_backbones_on_supported_shapes(name, shape):
    e = backbones.entry(name)
    try:
        net = backbones.build(name, shape, **e.tiny)
    except backbones.BackboneError as err:
        assert name == "nature-cnn" and shape[1] < 36, f"{name} should support {shape}: {err}"
        assert str(shape) in str(err)  # the message names the shape it cannot take
        return
    x = torch.randn(2, *shape, requires_grad=True)
    y = net(x)
    assert y.shape == (2, net.out_features)
    y.sum().backward()
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0  # gradients reach the first layer
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", SHAPES)
def test_decoder_reaches_each_target_shape(shape):
    dec = backbones.build("conv-decoder", (16,), out_shape=shape, widths=(8, 4))
    z = torch.randn(2, 16, requires_grad=True)
    y = dec(z)
    assert y.shape == (2, *shape) and dec.out_shape == shape
    y.sum().backward()
    assert dec.fc[0].weight.grad.abs().sum() > 0


def test_nature_cnn_has_the_paper_sizes():
    net = backbones.build("nature-cnn", (4, 84, 84))
    assert net.out_features == 512
    assert net.fc[1].in_features == 3136  # 64 x 7 x 7, found by the probe rather than typed in


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_state_resets_after_done(cell):
    torch.manual_seed(0)
    core = RecurrentCore((5,), hidden_size=7, cell=cell)
    x = torch.randn(2, 8, 5)
    done = torch.zeros(2, 8, dtype=torch.bool)
    done[0, 3] = True  # sequence 0: a new episode starts at step 3
    done[1, 6] = True
    out, _ = core(x, done=done)
    fresh0, _ = core(x[:1, 3:])
    fresh1, _ = core(x[1:, 6:])
    torch.testing.assert_close(out[0, 3:], fresh0[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1, 6:], fresh1[0], rtol=0, atol=1e-6)
    # before the done, the outputs are those of one uninterrupted sequence
    plain, _ = core(x)
    torch.testing.assert_close(out[0, :3], plain[0, :3], rtol=0, atol=1e-6)
    assert not torch.allclose(out[0, 3:], plain[0, 3:])  # the reset changed something


def test_recurrent_done_at_first_step_discards_the_given_state():
    core = RecurrentCore((3,), hidden_size=4)
    x = torch.randn(1, 5, 3)
    state = tuple(torch.randn_like(s) for s in core.initial_state(1))
    done = torch.zeros(1, 5, dtype=torch.bool)
    done[0, 0] = True
    out, _ = core(x, state, done)
    torch.testing.assert_close(out, core(x)[0], rtol=0, atol=1e-6)


def test_unknown_backbone_lists_the_closest_names():
    with pytest.raises(backbones.BackboneError, match="did you mean resnet"):
        backbones.build("resnt", (3, 32, 32))


def test_unknown_option_lists_the_options():
    with pytest.raises(backbones.BackboneError, match="takes: hidden, activation, dropout"):
        backbones.build("mlp", (4,), depth=3)


def test_bad_resnet_depth_says_which_depths_fit():
    with pytest.raises(backbones.BackboneError, match="8, 14, 20"):
        backbones.build("resnet", (3, 32, 32), depth=9)


def test_recurrent_refuses_a_time_major_done_mask():
    core = RecurrentCore((3,), hidden_size=4)
    with pytest.raises(backbones.BackboneError, match=r"done must be \(B, T\) = \(2, 5\)"):
        core(torch.randn(2, 5, 3), done=torch.zeros(5, 2, dtype=torch.bool))

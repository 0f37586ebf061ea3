"""The shared epoch loop's parts: keep-best's typed record, per-sample epoch means, and the update step."""

import json
import math

import pytest
import torch
from torch import nn

from fovea.fit import Best, KeepBest, Update, train_epoch
from fovea.precision import Precision


class _Run:
    """The part of a Run that keep-best reads: its state dict."""

    def __init__(self, state=None):
        self.state = state if state is not None else {}


def _nets():
    torch.manual_seed(0)
    model, best = nn.Linear(2, 1), nn.Linear(2, 1)
    return model, best


def test_keep_best_copies_only_a_better_score_and_ties_keep_the_earlier_weights():
    model, best = _nets()
    run = _Run()
    keep = KeepBest(run, model, best, "val/acc")
    assert keep.record == Best("val/acc")
    assert keep.offer((0.5, -1.0), at=1, figure=0.5)
    first = best.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not keep.offer((0.5, -1.0), at=2, figure=0.5)  # a tie: the earlier weights stay
    assert torch.equal(best.weight, first)
    assert keep.offer((0.5, -0.9), at=3, figure=0.5)  # equal accuracy, lower loss
    assert torch.equal(best.weight, model.weight)
    assert keep.record == Best("val/acc", (0.5, -0.9), 3, 0.5)


def test_keep_best_record_survives_a_json_round_trip_like_a_checkpoint():
    model, best = _nets()
    run = _Run()
    KeepBest(run, model, best, "val/loss").offer((-0.123456789012345,), at=4, figure=0.123456789012345)
    restored = _Run(json.loads(json.dumps(run.state)))  # state.json: the tuple comes back as a list
    keep = KeepBest(restored, model, best, "val/loss")
    assert keep.record == Best("val/loss", (-0.123456789012345,), 4, 0.123456789012345)
    assert not keep.offer((-0.123456789012345,), at=5, figure=0.123456789012345)
    assert keep.offer((-0.1,), at=6, figure=0.1)


@pytest.mark.parametrize(
    ("figure", "legacy", "expected"),
    [
        ("val/acc", {"best_val_acc": 0.9, "best_val_loss": 0.3, "best_epoch": 7}, Best("val/acc", (0.9, -0.3), 7, 0.9)),
        ("val/map", {"best_val_map": 0.7, "best_epoch": 2}, Best("val/map", (0.7,), 2, 0.7)),
        ("val/loss", {"best_loss": 80.0, "best_epoch": 9}, Best("val/loss", (-80.0,), 9, 80.0)),
    ],
)
def test_a_checkpoint_from_before_the_record_is_read_from_its_loose_keys(figure, legacy, expected):
    model, best = _nets()
    keep = KeepBest(_Run(dict(legacy)), model, best, figure)
    assert keep.record == expected


def test_take_keeps_the_weights_whatever_they_score():
    model, best = _nets()
    run = _Run()
    keep = KeepBest(run, model, best, "val/acc")
    keep.offer((0.9, 0.0), at=1, figure=0.9)
    with torch.no_grad():
        model.weight.add_(1.0)
    keep.take(at=2, figure=0.1)  # a sanity check keeps its last weights
    assert torch.equal(best.weight, model.weight) and keep.record.at == 2 and keep.record.figure == 0.1


def _update(model):
    """Least squares on the batch, SGD with lr 0.1."""

    def loss(batch):
        x, y = batch
        return {"loss": ((model(x).squeeze(1) - y) ** 2).mean()}

    return Update(loss, torch.optim.SGD(model.parameters(), lr=0.1), Precision("off", torch.device("cpu")),
                  model.parameters)  # fmt: skip


def _batches(sizes):
    g = torch.Generator().manual_seed(0)
    for n in sizes:
        yield (torch.randn(n, 2, generator=g), torch.randn(n, generator=g)), n, n


def test_epoch_means_are_per_sample_means_over_the_batches_of_unequal_size():
    model, _ = _nets()
    batches = list(_batches([4, 4, 1]))
    expected = []
    for (x, y), n, _ in batches:  # the loss each batch will report: measured before its own update
        expected.append((((model(x).squeeze(1) - y) ** 2).mean().item(), n))
        with torch.no_grad():  # (the same SGD step, by hand, to know the next batch's loss)
            err = model(x).squeeze(1) - y
            model.weight -= 0.1 * (2 * err[:, None] * x).mean(0, keepdim=True)
            model.bias -= 0.1 * (2 * err).mean(0)
    model2, _ = _nets()
    means, iteration, seen = train_epoch(batches, lambda _: (_update(model2),), iteration=5)
    assert iteration == 8 and seen == 9
    want = sum(v * n for v, n in expected) / 9
    assert means["loss"].item() == pytest.approx(want, rel=1e-5)
    assert not math.isclose(want, sum(v for v, _ in expected) / 3, rel_tol=1e-3)  # not the mean of batch means


def _constant(model, key, value):
    """An update whose logged ``key`` is always ``value`` (its loss still trains ``model``)."""

    def loss(batch):
        return {"loss": model(batch[0]).pow(2).mean(), key: torch.tensor(value)}

    return Update(loss, torch.optim.SGD(model.parameters(), lr=0.01), Precision("off", torch.device("cpu")),
                  model.parameters)  # fmt: skip


def test_several_updates_leave_their_colliding_loss_keys_out_and_average_each_key_over_its_own_updates():
    ud, ug = _constant(nn.Linear(2, 1), "d_out", 1.0), _constant(nn.Linear(2, 1), "g_out", 2.0)
    players = {1: (ud,), 2: (ud, ug), 3: (ud,), 4: (ud, ug)}  # the generator steps every second batch
    means, _, seen = train_epoch(_batches([2, 2, 2, 2]), lambda it: players[it], several=True)
    assert set(means) == {"d_out", "g_out"} and seen == 8
    assert means["d_out"].item() == 1.0 and means["g_out"].item() == 2.0  # not 1.0: g's 4 samples, not all 8


def test_a_skipped_update_counts_for_nothing():
    model, _ = _nets()
    before = [p.detach().clone() for p in model.parameters()]
    means, _, seen = train_epoch(_batches([3, 3]), lambda _: (_update(model),), skip=lambda loss, params: True)
    assert seen == 0 and means == {}
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_first_step_hook_measures_the_epochs_first_update():
    model, _ = _nets()
    calls = []

    def first_step():
        calls.append("before")
        return lambda: {"update_ratio/w": torch.tensor(1.0)}

    means, _, _ = train_epoch(_batches([2, 2, 2]), lambda _: (_update(model),), first_step=first_step)
    assert calls == ["before"] and means["update_ratio/w"] == 1.0

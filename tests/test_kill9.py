"""Kill -9 at any moment (issue 8): SIGKILL a training process at random points, over repeated trials, for DQN on
CartPole, the digits CNN and the VAE. Every time the run folder loads, every checkpoint in it is whole, and
``--resume`` carries the run to its end from the last complete checkpoint.

Checkpoints are written every loop step, so many kills land while one is being written. Run with ``-s`` to see
the trials and where each kill fell.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fovea import checkpoint

REPO = Path(__file__).resolve().parents[1]
TRIALS = 6  # per recipe
# recipe, its budget (checkpoints every loop step or nearly), the loop total the resumed run must reach, and the
# longest wait before the kill once the run folder exists (about the run's length on 2 cores)
CASES = {
    "dqn": ("dqn-cartpole", ["--total-steps", "4000", "--learning-starts", "500", "--checkpoint-every", "100",
                             "--save-replay", "true", "--eval-episodes", "0"], 4000, 4.0),  # fmt: skip
    "cnn": ("cnn-digits", ["--backbone.widths", "8,16", "--epochs", "30", "--checkpoint-every", "1"], 30, 2.5),
    "vae": ("vae-digits", ["--epochs", "12", "--checkpoint-every", "1", "--eval-every", "1", "--iwae-samples", "4"],
            12, 4.0),  # fmt: skip
}


def train(*args: str) -> list[str]:
    return [sys.executable, "-m", "fovea", "train", *args, "--wandb", "disabled"]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_sigkill_at_random_moments_never_loses_the_run(case, in_tmp):
    recipe, budget, total, longest = CASES[case]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rng = random.Random(f"kill-{case}")
    failures, mid_write = [], 0
    for trial in range(TRIALS):
        name = f"k{trial}"
        run_dir = in_tmp / "runs" / name
        proc = subprocess.Popen(train(recipe, "--name", name, *budget), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "config.json").exists() and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, longest))  # from start-up through training and checkpoint writes
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        ckpts = run_dir / "checkpoints"
        interrupted = bool(list(ckpts.glob(".tmp-*")) + list(ckpts.glob(".old-*"))) if ckpts.is_dir() else False
        mid_write += interrupted
        held = checkpoint.list_checkpoints(ckpts)
        for path in held:  # every checkpoint that is listed is whole
            try:
                checkpoint.load(path)
            except Exception as e:  # noqa: BLE001  (any failure here is what the test is about)
                failures.append(f"trial {trial}: {path.name} does not load: {e}")
        resumed = subprocess.run(train("--resume", str(run_dir.relative_to(in_tmp))), env=env, cwd=in_tmp,
                                 capture_output=True, text=True, timeout=300)  # fmt: skip
        last = checkpoint.step_of(held[-1]) if held else 0
        print(f"{recipe} trial {trial}: killed after step {last} of {total} ({len(held)} checkpoints"
              f"{', during a checkpoint write' if interrupted else ''}); resume exit {resumed.returncode}")  # fmt: skip
        if resumed.returncode != 0:
            failures.append(f"trial {trial}: resume failed: {resumed.stderr[-1500:]}")
            continue
        if held and f"from {held[-1].name}" not in resumed.stderr:
            failures.append(f"trial {trial}: did not resume from the last complete checkpoint {held[-1].name}")
        summary = json.loads((run_dir / "summary.json").read_text())
        reached = checkpoint.step_of(checkpoint.list_checkpoints(run_dir / "checkpoints")[-1])
        if reached != total or not summary:
            failures.append(f"trial {trial}: ended at step {reached}, not {total}")
        if list(ckpts.glob(".tmp-*")) or list(ckpts.glob(".old-*")):
            failures.append(f"trial {trial}: the resumed run left a half-written checkpoint behind")
    print(f"{recipe}: {TRIALS} kills, {mid_write} during a checkpoint write, {len(failures)} failures")
    assert not failures, "\n".join(failures)

"""Long runs (issue 8): once the replay buffer is full, a DQN run's resident memory stays flat.

The window measured is the training loop: from 30% of it (the buffer long full) to the moment its final checkpoint
appears; the final evaluation after it builds its own env and networks once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MB = 2**20


def rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (None once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_dqn_memory_stays_flat_once_the_replay_is_full(in_tmp):
    # the pixel task, 40k agent steps, a 4k-transition buffer that is full after a tenth of the run
    cmd = [sys.executable, "-m", "fovea", "train", "dqn-catch", "--name", "long", "--total-steps", "40000",
           "--buffer-size", "4000", "--eval-episodes", "0", "--checkpoint-every", "8000",
           "--wandb", "disabled"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, int]] = []
    final = in_tmp / "runs/long/checkpoints" / f"step_{40000:09d}"  # the last step (named in agent steps)
    start, loop_end = time.time(), None
    while proc.poll() is None and time.time() - start < 600:
        r = rss(proc.pid)
        if r is not None:
            samples.append((time.time() - start, r))
        if loop_end is None and final.exists():
            loop_end = time.time() - start
        time.sleep(0.1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert loop_end is not None, "the final checkpoint never appeared"
    steady = [r for t, r in samples if 0.3 * loop_end <= t <= loop_end]  # the buffer has long been full
    first, peak = steady[0], max(steady)
    print(f"dqn-catch 40k steps: RSS {first / MB:.1f} MB at 30% of the loop, peak after {peak / MB:.1f} MB, "
          f"at its end {steady[-1] / MB:.1f} MB ({len(steady)} samples over {loop_end:.0f} s)")
    assert peak - first < 25 * MB, f"resident memory grew by {(peak - first) / MB:.1f} MB after the buffer filled"

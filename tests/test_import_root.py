"""One import root: Fovea installs only ``fovea`` (its task folders as ``fovea.agents``, ``fovea.envs``, ...), so a
package of another project named ``agents`` or ``envs`` (openai-agents, say) hides none of Fovea's recipes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TASK_FOLDERS = ("agents", "backbones", "envs", "generative", "vision")

# Run where the repository is not on the path, with stand-ins that fail loudly if anything imports them.
SCRIPT = """
import json, sys
from fovea import cli
from fovea.config import recipes
cli.load_tasks()
names = sorted(recipes())
assert {"dqn-catch", "a2c-cartpole", "reinforce-cartpole", "dqn-pong", "a2c-pong"} <= set(names), names
for argv in (["train", "dqn-catch", "--name", "d", "--total-steps", "400", "--learning-starts", "100",
              "--eval-episodes", "2", "--wandb", "offline"],
             ["train", "a2c-cartpole", "--name", "a", "--total-steps", "400", "--eval-episodes", "2"]):
    assert cli.main(argv) == 0, argv
assert "agents" not in sys.modules and "envs" not in sys.modules, "a bare task name was imported"
print(json.dumps({"recipes": len(names)}))
"""


@pytest.mark.slow  # 6 s: a fresh interpreter imports every recipe
def test_stand_in_agents_and_envs_packages_hide_no_recipe(tmp_path):
    for name in ("agents", "envs"):  # other projects' packages, first on the path
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('the stand-in {name} package was imported')\n")
    env = {"PYTHONPATH": str(tmp_path), "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs/d/summary.json").exists() and (tmp_path / "runs/a/summary.json").exists()


def test_the_wheel_holds_one_top_level_package(tmp_path):
    src = tmp_path / "src"  # a copy: pip builds in the source tree, and the checkout stays as it is
    for folder in ("fovea", *TASK_FOLDERS):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(src)], check=True, capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = tmp_path.glob("fovea-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"fovea"}
    for folder in TASK_FOLDERS:  # each task folder is in it, under fovea/
        assert f"fovea/{folder}/__init__.py" in names


def test_an_editable_install_exposes_only_fovea(tmp_path):
    probe = f"import importlib.util as u; print([n for n in {TASK_FOLDERS!r} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

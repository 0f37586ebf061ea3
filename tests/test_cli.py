"""The command line's own contract: cheap to start (no torch for `import fovea` or `fovea --help`), its commands
from one table with the shared options declared once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fovea import cli

NO_TORCH = "import sys; {code}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"


@pytest.mark.parametrize("code", [
    "import fovea; fovea.train, fovea.load, fovea.Result, fovea.ConfigError",
    "from fovea.cli import main; main(['recipes', '--help'])",
    "from fovea.cli import main; main(['train', '--help'])",
    "from fovea.cli import main; main([])",
])  # fmt: skip
def test_import_fovea_and_help_import_no_torch(code):
    wrapped = f"try:\n    {code}\nexcept SystemExit:\n    pass\n" + NO_TORCH.format(code="pass")
    done = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_every_command_of_the_table_takes_its_shared_options():
    p = cli.parser()
    commands = p._subparsers._group_actions[0].choices  # noqa: SLF001
    assert set(commands) == set(cli.COMMANDS)
    for name in ("train", "search", "demo"):
        opts = {o for a in commands[name]._actions for o in a.option_strings}  # noqa: SLF001
        assert {"--name", "--runs-dir", "--device", "--wandb", "--keep-checkpoints", "--on-nonfinite"} <= opts, name
    for name in ("eval", "sample", "explain", "detect"):
        args = commands[name].parse_args(["runs/x", *(["a.png"] if name == "detect" else []),
                                          *(["--what", "filters"] if name == "explain" else [])])  # fmt: skip
        assert (args.run_dir, args.device, args.project) == ("runs/x", "auto", "fovea"), name
        assert args.wandb == ("disabled" if name == "detect" else "auto"), name  # detect's pictures are files

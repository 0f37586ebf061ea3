"""The runtime every Fovea task shares: configs, the Run, tracking, checkpoints and the CLI."""

__version__ = "0.1.0"

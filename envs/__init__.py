"""Environments, no learning: small tasks for fast checks (Catch) and, later, vectorised Atari.

Importing the package registers ``fovea/Catch-v0`` with gymnasium.
"""

from fovea.envs.catch import Catch

__all__ = ["Catch"]

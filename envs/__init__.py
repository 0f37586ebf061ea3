"""Environments, no learning: one vector interface (``vector.make``) over Atari (``atari``), any gymnasium env with
Discrete actions and image or vector observations (``gymenv``), and Catch, a tiny pixel task for fast checks.

Importing the package registers ``fovea/Catch-v0`` with gymnasium.
"""

from fovea.envs.catch import Catch

__all__ = ["Catch"]

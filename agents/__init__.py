"""Deep RL agents on pixels: DQN with experience replay, REINFORCE with a baseline, A2C; the SB3 adapter.

Importing the package registers its recipes (``dqn-cartpole``, ...).
"""

from fovea.agents import a2c, dqn, reinforce  # noqa: F401

"""Deep RL agents on pixels: DQN with experience replay, REINFORCE with a baseline, A2C, PPO; the SB3 adapter.

Importing the package registers its recipes (``dqn-cartpole``, ...).
"""

from fovea.agents import a2c, classic, dqn, ppo, reinforce  # noqa: F401

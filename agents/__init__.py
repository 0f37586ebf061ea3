"""Deep RL agents on pixels: DQN with experience replay (more to come), and the stable-baselines3 adapter.

Importing the package registers its recipes (``dqn-cartpole``, ...).
"""

from agents import dqn  # noqa: F401

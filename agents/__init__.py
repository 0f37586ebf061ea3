"""Deep RL agents on pixels (DQN, REINFORCE, A2C: issue 3), and the stable-baselines3 adapter."""

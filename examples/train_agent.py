"""Train an agent on CartPole and watch it: one game to MP4, then games played step by step in gymnasium.

Run: python examples/train_agent.py [TOTAL_STEPS]   (ppo-cartpole reaches 500, the maximum, within 100k steps)
"""

import sys

import fovea

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
result = fovea.train("ppo-cartpole", total_steps=steps)
print(f"{result.run_dir}: mean return {result.figures['eval/mean_return']:.0f} on fresh games")

agent = result.model  # predict(obs) -> action, as in stable-baselines3
print(f"video of one game: {agent.watch()}")

env = agent.make_env()  # the agent's game as a gymnasium env
for game in range(3):
    obs, _ = env.reset(seed=game)
    total, done = 0.0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(agent.predict(obs))
        total, done = total + reward, terminated or truncated
    print(f"game {game}: return {total:.0f}")
env.close()

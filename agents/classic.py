"""Recipes for gymnasium's classic-control tasks beyond CartPole, with RL Zoo's tuned settings.

Acrobot-v1 (a two-link pendulum swung up past a height; -1 per step until then, 500 steps at most; "solved" is
-100, the level RL Zoo's agents reach): ``dqn-acrobot`` and ``ppo-acrobot``. The settings are those of
rl-baselines3-zoo's hyperparams/dqn.yml and ppo.yml for Acrobot-v1, mapped onto Fovea's fields as the comments say.
"""

from fovea.agents.dqn import DQNConfig
from fovea.agents.ppo import PPOConfig
from fovea.config import register_recipe

# dqn.yml: 1e5 steps, MlpPolicy [256, 256], Adam 6.3e-4, batch 128, buffer 50k, learning_starts 0, gamma 0.99,
# target_update_interval 250, train_freq 4 with gradient_steps -1 (as many gradient steps as env steps: 4 each 4),
# exploration 1 -> 0.1 over the first 12%. SB3's DQN defaults: Huber loss, gradient norm 10, hard target updates.
register_recipe(
    "dqn-acrobot",
    DQNConfig(
        env="Acrobot-v1",
        total_steps=100_000,
        lr=6.3e-4,
        batch_size=128,
        buffer_size=50_000,
        learning_starts=0,
        gamma=0.99,
        target_update_every=250,
        train_every=4,
        gradient_steps=4,
        eps_fraction=0.12,
        eps_end=0.1,
        eval_every=10_000,
    ),  # fmt: skip
    "DQN on Acrobot-v1 with RL Zoo's tuned settings: above -100 within 100k steps",
)

# ppo.yml: 16 envs x 256 steps, 4 epochs, GAE 0.94, gamma 0.99, no entropy bonus, 1e6 steps, and SB3's PPO defaults:
# minibatches of 64 (64 per epoch), Adam 3e-4 and clip 0.2 (both constant), value 0.5, gradient norm 0.5, separate
# 64x64 tanh trunks for actor and critic. RL Zoo also normalises observations and rewards (VecNormalize), which Fovea
# does not: Acrobot's observations are bounded (cosines, sines and two angular velocities) and the advantages are
# standardised per minibatch.
register_recipe(
    "ppo-acrobot",
    PPOConfig(
        env="Acrobot-v1",
        num_envs=16,
        n_steps=256,
        n_epochs=4,
        num_minibatches=64,
        total_steps=1_000_000,
        gamma=0.99,
        gae_lambda=0.94,
        ent_coef=0.0,
        lr=3e-4,
        lr_decay=False,
        clip_range=0.2,
        clip_decay=False,
        eval_every=100_000,
    ),  # fmt: skip
    "PPO on Acrobot-v1 with RL Zoo's tuned settings (no observation normalisation): above -100 within 1M steps",
)

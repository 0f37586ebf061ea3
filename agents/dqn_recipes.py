"""The DQN family's recipes, each setting with its source: DQN on CartPole and Catch, DQN on Atari with the
CleanRL / RL Zoo settings and with the Nature paper's, and DrQ(epsilon) for the Atari 100k benchmark."""

from __future__ import annotations

from fovea.agents.base import catch_cnn
from fovea.agents.dqn_config import DQNConfig
from fovea.config import BackboneSpec, register_recipe

register_recipe("dqn-cartpole", DQNConfig(), "DQN on CartPole-v1 with RL Zoo's tuned settings: 500 within 50k steps")
register_recipe(
    "dqn-catch",
    DQNConfig(
        env="catch",
        backbone=catch_cnn(),
        num_envs=4,
        total_steps=20_000,
        buffer_size=20_000,
        learning_starts=1000,
        train_every=4,
        gradient_steps=1,
        target_update_every=250,
        lr=1e-3,
        eps_end=0.05,
        eps_fraction=0.5,
        eval_episodes=100,
        checkpoint_every=4_000,
    ),
    "DQN with a small CNN on the 10x5 Catch pixels: catches the ball in >90% of episodes within 20k steps",
)
# CleanRL's dqn_atari.py / RL Zoo: Adam 1e-4, batch 32, train every 4 steps, target every 1,000, epsilon 1 -> 0.01
# over 10% of 10M steps, a 1M-transition replay, rewards clipped for learning, the NoFrameskip-v4 envs (no sticky
# actions).
_ATARI = dict(
    sticky=0.0,
    backbone=BackboneSpec(name="nature-cnn"),
    total_steps=10_000_000,
    buffer_size=1_000_000,
    batch_size=32,
    lr=1e-4,
    learning_starts=80_000,
    train_every=4,
    gradient_steps=1,
    target_update_every=1000,
    eps_end=0.01,
    eps_fraction=0.1,
    clip_rewards=True,
    eval_epsilon=0.05,
    eval_episodes=30,
    eval_every=500_000,
    checkpoint_every=100_000,
)
# Mnih et al. (2015), Extended Data Table 1: their centred RMSprop (lr 2.5e-4, gradient and squared-gradient momentum
# 0.95, min squared gradient 0.01 inside the root), target every 10k updates (40k steps), epsilon 1 -> 0.1 over 1M
# steps, learning after 50k steps, no sticky actions.
_NATURE = {
    **_ATARI,
    "optimizer": "rmsprop-centered",
    "lr": 2.5e-4,
    "optimizer_eps": 0.01,
    "rmsprop_alpha": 0.95,
    "learning_starts": 50_000,
    "target_update_every": 40_000,
    "eps_end": 0.1,
    "eps_fraction": 0.1,
    "max_grad_norm": 0.0,
}
for _game in ("pong", "breakout"):
    register_recipe(
        f"dqn-{_game}",
        DQNConfig(env=_game, **_ATARI),
        f"DQN on Atari {_game.capitalize()} with the CleanRL / RL Zoo settings (10M steps)",
    )
    register_recipe(
        f"dqn-nature-{_game}",
        DQNConfig(env=_game, **_NATURE),
        f"DQN on Atari {_game.capitalize()} with the Nature paper's settings (Mnih et al. 2015)",
    )

# DrQ(epsilon) (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", NeurIPS 2021; the agent of
# Kostrikov et al., ICLR 2021, with the standard epsilons), as Dopamine's labs/atari_100k/configs/DrQ_eps.gin sets it:
# Nature CNN with dueling heads and double DQN targets, n-step 10, gamma 0.99, learning after 1,600 steps, one update
# per agent step (update_period 1), the target network copied every update (target_update_period 1), epsilon 1 -> 0.01
# over 5,000 steps after the first 1,600 (linearly_decaying_epsilon), 0.001 in evaluation, Adam lr 1e-4 and eps
# 1.5e-4 (DER's, van Hasselt et al. 2019), batch 32, uniform replay holding every step (1M there, "a proxy for
# unbounded memory"), Huber loss, no gradient clipping, rewards clipped, random shifts (pad 4) and intensity noise on
# each update's observations (Atari100kRainbowAgent.data_augmentation). The benchmark's protocol (Kaiser et al. 2019,
# as Dopamine runs it): no sticky actions, a lost life ends the episode for learning, episodes end at 27,000 agent
# steps (108,000 frames), 100,000 agent steps, then 100 evaluation episodes of the final network.
# Two differences from Dopamine's env: Fovea starts games with up to 30 no-ops and presses FIRE after a lost life in
# games that need it (its Atari protocol for every agent; Dopamine does neither).
ATARI_100K_GAMES = (
    "alien", "amidar", "assault", "asterix", "bank_heist", "battle_zone", "boxing", "breakout", "chopper_command",
    "crazy_climber", "demon_attack", "freeway", "frostbite", "gopher", "hero", "jamesbond", "kangaroo", "krull",
    "kung_fu_master", "ms_pacman", "pong", "private_eye", "qbert", "road_runner", "seaquest", "up_n_down",
)  # fmt: skip
DRQ_EPS = dict(
    sticky=0.0,
    life_loss=True,
    backbone=BackboneSpec(name="nature-cnn"),
    dueling=True,
    double=True,
    n_step=10,
    gamma=0.99,
    total_steps=100_000,
    buffer_size=100_000,
    batch_size=32,
    optimizer="adam",
    lr=1e-4,
    optimizer_eps=1.5e-4,
    learning_starts=1600,
    train_every=1,
    gradient_steps=1,
    target_update_every=1,
    tau=1.0,
    eps_start=1.0,
    eps_end=0.01,
    eps_decay_steps=5000,
    eval_epsilon=0.001,
    loss="huber",
    max_grad_norm=0.0,
    clip_rewards=True,
    augment="shift-intensity",
    eval_episodes=100,
    eval_every=0,
    checkpoint_every=10_000,
)
# One recipe for the 26 games (--env GAME), so that the list of recipes and the recipe tests stay one entry long.
register_recipe(
    "drq100k",
    DQNConfig(env="pong", **DRQ_EPS),
    "DrQ(epsilon) on the Atari 100k benchmark (Dopamine's DrQ_eps.gin; --env GAME for any of its 26 games)",
)

"""stable-baselines3's own algorithms train with a Fovea backbone through the adapter."""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3 import PPO

from fovea import envs  # noqa: F401  (registers fovea/Catch-v0)
from fovea.agents.sb3 import FoveaExtractor
from fovea.backbones.cnn import ConvNet


def test_ppo_trains_with_a_fovea_backbone():
    env = gym.make("fovea/Catch-v0")
    model = PPO(
        "CnnPolicy",
        env,
        n_steps=64,
        batch_size=32,
        n_epochs=2,
        seed=0,
        device="cpu",
        policy_kwargs=dict(
            features_extractor_class=FoveaExtractor,
            features_extractor_kwargs=dict(backbone="convnet", widths=(8,), downsample="none"),
        ),
    )
    extractor = model.policy.features_extractor
    assert isinstance(extractor.backbone, ConvNet)
    assert extractor.features_dim == extractor.backbone.out_features == 8 * 10 * 5
    before = {k: v.clone() for k, v in extractor.state_dict().items()}
    model.learn(total_timesteps=320)
    assert model.num_timesteps >= 320
    changed = [
        k for k, v in extractor.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert changed, "PPO's updates did not reach the Fovea backbone"
    action, _ = model.predict(env.reset(seed=1)[0], deterministic=True)
    assert env.action_space.contains(int(action))

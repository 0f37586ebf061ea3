"""Use any Fovea backbone inside stable-baselines3: ``FoveaExtractor`` is a ``BaseFeaturesExtractor``.

    PPO("CnnPolicy", env, policy_kwargs=dict(
        features_extractor_class=FoveaExtractor,
        features_extractor_kwargs=dict(backbone="nature-cnn")))

SB3 scales uint8 image observations to [0, 1] before the extractor (``normalize_images=True``), so
the backbone gets floats, as every Fovea backbone expects.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from fovea import backbones


class FoveaExtractor(BaseFeaturesExtractor):
    """SB3 features extractor around ``backbones.build(backbone, observation_space.shape, **options)``.

    Args:
        observation_space: a Box space; images channel-first (C, H, W), as SB3's VecTransposeImage gives.
        backbone: a registered backbone name (``fovea backbones`` lists them).
        **options: the backbone's options, e.g. ``widths=(32, 64)``.
    """

    def __init__(self, observation_space: gym.spaces.Box, backbone: str = "nature-cnn", **options):
        net = backbones.build(backbone, observation_space.shape, **options)
        super().__init__(observation_space, features_dim=net.out_features)
        self.backbone = net

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.backbone(observations)

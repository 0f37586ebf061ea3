"""Our separate-trunk CartPole actor-critic inside SB3's MlpPolicy, for tests that compare losses on one batch."""

from __future__ import annotations

import torch
from torch import nn

# SB3's MlpPolicy shaped like the a2c-cartpole / ppo-cartpole nets: separate 64-64 tanh trunks for actor and critic
MLP_POLICY_KWARGS = dict(net_arch=dict(pi=[64, 64], vf=[64, 64]), activation_fn=nn.Tanh)


def copy_into_sb3(net, model) -> dict[str, nn.Module]:
    """Copy ``net``'s weights into SB3 ``model``'s policy (built with ``MLP_POLICY_KWARGS``) and give it a logger that
    writes nowhere (SB3's default ``configure()`` leaves an SB3-<date> folder in /tmp); SB3's module name -> our
    layer, for comparing their gradients afterwards."""
    from stable_baselines3.common.logger import Logger

    model.set_logger(Logger(None, []))
    pairs = {"mlp_extractor.policy_net.0": net.trunk.net[1], "mlp_extractor.policy_net.2": net.trunk.net[3],
             "mlp_extractor.value_net.0": net.critic_trunk.net[1], "mlp_extractor.value_net.2": net.critic_trunk.net[3],
             "action_net": net.policy, "value_net": net.value}  # fmt: skip
    with torch.no_grad():
        for name, layer in pairs.items():
            target = model.policy.get_submodule(name)
            target.weight.copy_(layer.weight)
            target.bias.copy_(layer.bias)
    return pairs

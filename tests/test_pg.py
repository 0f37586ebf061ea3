"""Policy gradients: returns and advantages by hand, the baseline's variance reduction, the recurrent
rollout, CLI runs and resume, and the CartPole learning checks (SLM-Lab's bands)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fovea.agents import a2c
from fovea.agents.a2c import A2CConfig, Rollout, collect
from fovea.agents.base import catch_cnn, make_env
from fovea.agents.policy import sample
from fovea.agents.reinforce import Episodes, ReinforceConfig, advantages, batch_tensors, policy_loss
from fovea.agents.returns import gae, nstep_returns, returns_to_go
from fovea.cli import main
from fovea.errors import ConfigError


def test_returns_to_go_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 1.0, 1.0]])
    ends = torch.tensor([[False, False, True, False, True]])  # two episodes: steps 0-2 and 3-4
    bootstrap = torch.tensor([[0.0, 0.0, 0.0, 0.0, 10.0]])  # the second one was truncated, V(final) = 10
    g = returns_to_go(rewards, ends, 0.5, bootstrap)
    # 2 | 0 + 0.5 * 2 = 1 | 1 + 0.5 * 1 = 1.5 ;  1 + 0.5 * 10 = 6 | 1 + 0.5 * 6 = 4
    assert g.tolist() == [[1.5, 1.0, 2.0, 4.0, 6.0]]


def test_nstep_returns_and_gae_by_hand():
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    nv = torch.tensor([[1.0, 1.5, 2.0]])  # V(s_{t+1}); 2.0 bootstraps after the rollout
    no = torch.zeros(1, 3, dtype=torch.bool)
    # n-step: R_2 = 2 + 0.9 * 2 = 3.8, R_1 = 0.9 * 3.8 = 3.42, R_0 = 1 + 0.9 * 3.42 = 4.078
    assert nstep_returns(r, v, nv, no, no, 0.9).tolist()[0] == pytest.approx([4.078, 3.42, 3.8])
    # GAE(0.5): deltas 1 + 0.9 * 1 - 0.5 = 1.4, 0.9 * 1.5 - 1 = 0.35, 2 + 0.9 * 2 - 1.5 = 2.3;
    # A_2 = 2.3, A_1 = 0.35 + 0.45 * 2.3 = 1.385, A_0 = 1.4 + 0.45 * 1.385 = 2.02325
    assert gae(r, v, nv, no, no, 0.9, 0.5).tolist()[0] == pytest.approx([2.02325, 1.385, 2.3])
    # lambda = 0 is the one-step TD error
    assert gae(r, v, nv, no, no, 0.9, 0.0).tolist()[0] == pytest.approx([1.4, 0.35, 2.3])
    # a termination after step 1: no bootstrap there and nothing flows back across it
    term = torch.tensor([[False, True, False]])
    assert nstep_returns(r, v, nv, term, term, 0.9).tolist()[0] == pytest.approx([1.0, 0.0, 3.8])
    # a truncation after step 1 cuts the return too, but bootstraps from V(final obs) = 1.5
    trunc = torch.tensor([[False, True, False]])
    assert nstep_returns(r, v, nv, no, trunc, 0.9).tolist()[0] == pytest.approx([1 + 0.9 * 1.35, 1.35, 3.8])


def _episodes(cfg, net, count: int, seed: int = 0):
    env = make_env(cfg, cfg.num_envs, seed=seed)
    eps, obs, gen = Episodes(cfg.num_envs), env.reset(), torch.Generator().manual_seed(seed)
    while len(eps.done) < count:
        with torch.no_grad():
            logits, _, _ = net(torch.as_tensor(obs)[:, None])
        act = sample(logits[:, 0], False, gen).numpy()
        nxt, r, term, trunc, info = env.step(act)
        for i in np.flatnonzero(~info["reset"]):
            eps.add(i, obs[i], int(act[i]), float(r[i]))
        for i in np.flatnonzero(term | trunc):
            eps.end(i)
        obs = nxt
    env.close()
    return eps.take()[:count]


def test_baselines_lower_the_variance_of_the_gradient_estimate():
    """The same 64 CartPole episodes, the same policy: the per-episode REINFORCE gradient
    sum_t (G_t - b) grad log pi varies less around its mean with a baseline than without."""
    torch.manual_seed(0)
    cfg = ReinforceConfig(num_envs=8)
    env = make_env(cfg, 1, seed=0)
    net = a2c.build(cfg, env)
    env.close()
    batch = _episodes(cfg, net, 64)
    obs, _, returns = batch_tensors(cfg, batch, torch.device("cpu"))
    critic = [*net.critic_trunk.parameters(), *net.value.parameters()]
    opt = torch.optim.Adam(critic, lr=3e-3)
    for _ in range(300):  # fit V(s) to these returns
        _, v, _ = net(obs)
        loss = ((v - returns) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    actor = [*net.trunk.parameters(), *net.policy.parameters()]

    def per_episode_gradients(kind: str) -> torch.Tensor:
        grads = []
        for episode in batch:
            o, a, g = batch_tensors(cfg, [episode], torch.device("cpu"))
            logits, v, _ = net(o)
            adv = advantages(g, kind, values=v, running_mean=float(returns.mean()))
            loss = policy_loss(logits, a, adv) * g.numel()  # the sum over the episode's steps
            grads.append(torch.cat([x.flatten() for x in torch.autograd.grad(loss, actor)]))
        return torch.stack(grads)

    variance = {}
    for kind in ("none", "mean", "value"):
        g = per_episode_gradients(kind)
        variance[kind] = float(((g - g.mean(0)) ** 2).sum(1).mean())
    assert variance["mean"] < 0.75 * variance["none"], variance
    assert variance["value"] < 0.75 * variance["none"], variance


def test_recurrent_rollout_values_match_the_unrolled_update():
    """Acting step by step and unrolling the whole rollout at once (as the update does) give the same
    values: the state is carried across rollouts and reset exactly where episodes start."""
    torch.manual_seed(0)
    spec = a2c.BackboneSpec(name="convnet", options={"widths": (8,), "downsample": "none", "norm": "none"})
    cfg = A2CConfig(env="catch", num_envs=3, n_steps=7, recurrent="gru", hidden_size=16, backbone=spec)
    env = make_env(cfg, cfg.num_envs, seed=0)
    net = a2c.build(cfg, env)
    buf = Rollout(3, 7, env.single_observation_space.shape, torch.uint8, torch.device("cpu"), env.num_actions)
    obs, starts, state, gen = env.reset(), np.ones(3, bool), net.initial_state(3), torch.Generator().manual_seed(0)
    seen_starts = 0
    for _ in range(4):  # 28 steps: Catch episodes last 9, so rollouts cross several episode starts
        state0 = tuple(s.clone() for s in state)
        obs, starts, state, _ = collect(cfg, env, net, buf, obs, starts, state, gen, [])
        with torch.no_grad():
            _, values, _ = net(buf.obs, state0, buf.starts)
        torch.testing.assert_close(values, buf.values)
        seen_starts += int(buf.starts[:, 1:].sum())  # resets inside a rollout, not only at its first step
    assert seen_starts >= 6
    env.close()


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("recipe", ["a2c-cartpole", "reinforce-cartpole"])
def test_policy_gradient_recipes_train_log_and_resume(recipe, in_tmp, capsys):
    argv = ["train", recipe, "--name", "pg", "--total-steps", "2000", "--eval-every", "1000", "--eval-episodes", "2",
            "--checkpoint-every", "400"]  # fmt: skip
    assert main(argv) == 0
    first = _last_json(capsys)
    assert first["agent_steps"] == 2000 and first["eval/final_mean_return"] == first["eval/mean_return"]
    assert main(["train", "--resume", "runs/pg", "--total-steps", "3000"]) == 0
    summary = _last_json(capsys)
    assert summary["agent_steps"] == 3000
    rows = [json.loads(line) for line in (in_tmp / "runs/pg/metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"train/episodic_return", "train/episode_length", "train/policy_loss", "train/entropy", "perf/sps",
            "eval/mean_return"} <= keys  # fmt: skip
    assert max(r["step"] for r in rows) == 3000
    assert list((in_tmp / "runs/pg/wandb").glob("offline-run-*/run-*.wandb"))  # W&B offline got it too
    # fovea eval scores the final network on the summary's fresh games (so the same figure), --network best the best
    assert main(["eval", "runs/pg"]) == 0
    scored = _last_json(capsys)
    assert scored["network"] == "final" and scored["trained_steps"] == 3000
    assert scored["eval/mean_return"] == summary["eval/final_mean_return"]
    assert main(["eval", "runs/pg", "--network", "best"]) == 0
    best = _last_json(capsys)
    assert best["network"] == "best" and best["trained_steps"] == summary["eval/best_step"]
    assert best["eval/mean_return"] == summary["eval/best_mean_return"]
    # --step N scores the network of an earlier checkpoint on the same fresh games; the latest's is the final one
    assert main(["eval", "runs/pg", "--step", "3000"]) == 0
    assert _last_json(capsys)["eval/mean_return"] == summary["eval/final_mean_return"]
    assert main(["eval", "runs/pg", "--step", "2800"]) == 0
    earlier = _last_json(capsys)
    assert earlier["network"] == "checkpoint" and earlier["trained_steps"] == earlier["step"] == 2800
    # each network's score has its own file: the final network's eval.json is not overwritten by an earlier one's
    saved = {f.name: json.loads(f.read_text())["eval/mean_return"] for f in (in_tmp / "runs/pg").glob("eval*.json")}
    final, first = scored["eval/mean_return"], earlier["eval/mean_return"]
    assert saved == {"eval.json": final, "eval-best.json": best["eval/mean_return"], "eval-step_3000.json": final,
                     "eval-step_2800.json": first}
    assert main(["eval", "runs/pg", "--step", "1000"]) == 2
    assert "--step 1000: runs/pg keeps no checkpoint of that step; it keeps steps " in capsys.readouterr().err
    assert main(["eval", "runs/pg", "--step", "2800", "--network", "best"]) == 2
    assert "give one or the other" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", ["a2c-cartpole", "dqn-cartpole"])
def test_scores_come_from_games_no_training_or_selection_played(recipe, in_tmp, capsys, monkeypatch):
    """The periodic evaluations that pick the best network replay the same games; the summary's scores and `fovea
    eval` play games seeded apart from those and from every training game."""
    from fovea.envs import vector

    seeds: list[set] = []
    make = vector.make

    def recording(name, num_envs, *, seed=0, **options):
        seeds.append({seed + i for i in range(num_envs)})  # gymnasium and ale-py seed env i with seed + i
        return make(name, num_envs, seed=seed, **options)

    monkeypatch.setattr(vector, "make", recording)
    argv = ["train", recipe, "--name", "s", "--wandb", "disabled", "--total-steps", "1200", "--eval-every", "400",
            "--eval-episodes", "3", "--learning-starts", "100"]  # fmt: skip
    assert main(argv if recipe.startswith("dqn") else argv[:-2]) == 0
    training_seeds, scored = set().union(*seeds[:-2]), seeds[-1]  # the last two: the final and best scores
    seeds.clear()
    assert main(["eval", "runs/s", "--episodes", "3"]) == 0
    assert seeds[-1] == scored and not scored & training_seeds


def test_a2c_trains_with_rollouts_of_reset_steps_only(in_tmp, capsys):
    """One env and one step per rollout: the rollout after an episode's end holds only its reset step, a mean over
    nothing, which used to be NaN and stop the run ("training diverged")."""
    argv = ["train", "a2c-cartpole", "--name", "one", "--wandb", "disabled", "--num-envs", "1", "--n-steps", "1",
            "--total-steps", "600", "--eval-episodes", "1"]  # fmt: skip
    assert main(argv) == 0
    assert _last_json(capsys)["agent_steps"] == 600


def test_recurrent_a2c_runs_on_atari_pixels(in_tmp, capsys):
    argv = ["train", "a2c-lstm-pong", "--name", "lstm", "--wandb", "disabled", "--total-steps", "160",
            "--num-envs", "2", "--hidden-size", "32", "--eval-episodes", "0"]  # fmt: skip
    assert main(argv) == 0
    assert _last_json(capsys)["agent_steps"] == 160
    from fovea import checkpoint

    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/lstm/checkpoints")[-1])
    weights = state["objects"]["net"]
    assert weights["trunk.convs.0.weight"].shape == (32, 4, 8, 8)
    assert weights["core.rnn.weight_hh_l0"].shape == (4 * 32, 32)
    assert int(next(iter(state["objects"]["optimizer"]["state"].values()))["step"]) == 160 // (2 * 5)


def test_policy_gradient_config_errors():
    with pytest.raises(ConfigError, match="recurrent needs shared_backbone = true"):
        A2CConfig(recurrent="lstm", shared_backbone=False)
    with pytest.raises(ConfigError, match="baseline"):
        ReinforceConfig(baseline="learned")
    with pytest.raises(ConfigError, match="--backbone-from"):
        A2CConfig(freeze_backbone=True)


@pytest.mark.slow
def test_a2c_learns_cartpole_within_200k_steps(in_tmp, capsys):
    assert main(["train", "a2c-cartpole", "--name", "a2c", "--wandb", "disabled"]) == 0
    figures = _last_json(capsys)
    assert figures["agent_steps"] == 200_000
    assert figures["eval/best_mean_return"] >= 475, figures  # SLM-Lab A2C (GAE): 497 at 200k steps


@pytest.mark.slow
def test_reinforce_learns_cartpole_within_200k_steps(in_tmp, capsys):
    assert main(["train", "reinforce-cartpole", "--name", "rf", "--wandb", "disabled"]) == 0
    figures = _last_json(capsys)
    assert figures["agent_steps"] == 200_000
    assert figures["eval/best_mean_return"] >= 475, figures  # SLM-Lab REINFORCE: 483 at 200k steps


def test_backbone_from_another_run_loads_and_freezes_the_trunk(in_tmp, capsys):
    from fovea import checkpoint

    def weights(run: str, obj: str) -> dict:
        state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / f"runs/{run}/checkpoints")[-1])
        return state["objects"][obj]

    common = ["--wandb", "disabled", "--eval-episodes", "0"]
    assert main(["train", "a2c-catch", "--name", "src", "--total-steps", "640", *common]) == 0
    argv = ["train", "dqn-catch", "--name", "dst", "--total-steps", "400", "--learning-starts", "100",
            "--backbone-from", "runs/src", "--freeze-backbone", "true", *common]  # fmt: skip
    assert main(argv) == 0
    src, dst = weights("src", "net"), weights("dst", "qnet")
    trunk = [k for k in src if k.startswith("trunk.")]
    assert trunk
    for k in trunk:  # the A2C trunk (not its `best` copy), unchanged by 300 frozen DQN updates
        torch.testing.assert_close(dst["backbone." + k.removeprefix("trunk.")], src[k])
    optimizer = weights("dst", "optimizer")
    assert len(optimizer["state"]) == 2  # Adam trained only the head's weight and bias
    capsys.readouterr()
    bad = ["train", "dqn-catch", "--name", "bad", "--backbone-from", "runs/src:critic", *common]
    assert main(bad) == 2
    assert "runs/src holds no weights that fit this ConvNet" in capsys.readouterr().err
    assert not (in_tmp / "runs/bad").exists()


def test_evaluation_plays_a_fixed_quota_per_env():
    """Keeping the first episodes to end would favour short (on CartPole: bad) ones; each env plays its share."""
    from fovea.agents.evaluation import play

    def policy(obs, starts):  # env 0 always pushes left (falls in ~10 steps); the others balance the pole
        balance = (obs[:, 2] + obs[:, 3] > 0).astype(np.int64)
        balance[0] = 0
        return balance

    returns = np.sort(play(A2CConfig(), policy, 10, seed=0, num_envs=4))
    # quotas 3, 3, 2, 2: three short games from env 0, seven full 500-step games from the others
    assert (returns[:3] < 50).all() and (returns[3:] == 500).all(), returns


def test_without_evaluations_the_final_network_is_the_one_evaluated(in_tmp, capsys):
    from fovea import checkpoint

    argv = ["train", "a2c-catch", "--name", "noeval", "--wandb", "disabled", "--total-steps", "800",
            "--eval-episodes", "0"]  # fmt: skip
    assert main(argv) == 0
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/noeval/checkpoints")[-1])
    net, best = state["objects"]["net"], state["objects"]["best"]
    assert all(torch.equal(net[k], best[k]) for k in net)
    assert main(["eval", "runs/noeval", "--episodes", "3"]) == 0
    assert _last_json(capsys)["trained_steps"] == 800


@pytest.mark.parametrize(("recipe", "extra"), [("a2c-catch", []), ("reinforce-catch", ["--batch-episodes", "8"])])
def test_policy_gradients_learn_in_bf16_on_the_cpu(recipe, extra, in_tmp):
    argv = ["train", recipe, "--name", "bf", "--wandb", "disabled", "--amp", "bf16", "--total-steps", "640",
            "--eval-episodes", "0", *extra]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (in_tmp / "runs/bf/metrics.jsonl").read_text().splitlines()]
    figures = [r[k] for r in rows for k in ("train/policy_loss", "train/entropy") if k in r]
    assert len(figures) >= 2 and np.isfinite(figures).all()


def test_the_update_reads_the_transitions_by_index_as_the_mask_did():
    """A2C's update selects the rollout's transitions with indices the host knows (no device read-back);
    the losses are those of boolean-mask selection."""
    torch.manual_seed(0)
    cfg = A2CConfig(env="catch", num_envs=3, n_steps=12, backbone=catch_cnn())
    env = make_env(cfg, cfg.num_envs, seed=0)
    net = a2c.build(cfg, env)
    buf = Rollout(3, 12, env.single_observation_space.shape, torch.uint8, torch.device("cpu"), env.num_actions)
    obs, starts, gen = env.reset(), np.ones(3, bool), torch.Generator().manual_seed(0)
    _, _, _, last_value = collect(cfg, env, net, buf, obs, starts, None, gen, [])
    env.close()
    assert not buf.valid.all()  # a Catch episode lasts 9 steps: 12 steps hold a restart
    out = a2c.update(cfg, net, torch.optim.SGD(net.parameters(), lr=0.0), buf, last_value, None)
    valid = torch.as_tensor(buf.valid)
    logits, values, _ = net(buf.obs)
    adv = gae(torch.as_tensor(buf.rewards), buf.values, torch.cat([buf.values[:, 1:], last_value[:, None]], 1),
                  torch.as_tensor(buf.terminated), torch.as_tensor(buf.ends), cfg.gamma, cfg.gae_lambda)  # fmt: skip
    logp = torch.log_softmax(logits[valid], -1).gather(1, buf.actions[valid][:, None]).squeeze(1)
    torch.testing.assert_close(out["policy_loss"], -(adv[valid] * logp).mean())
    torch.testing.assert_close(out["value_loss"], ((values[valid] - (adv + buf.values)[valid]) ** 2).mean())


@pytest.mark.slow
def test_a_compiled_a2c_run_checkpoints_and_resumes(in_tmp, capsys):
    from fovea import checkpoint

    argv = ["train", "a2c-cartpole", "--name", "co", "--wandb", "disabled", "--compile", "true", "--total-steps",
            "400", "--checkpoint-every", "200", "--eval-every", "0", "--eval-episodes", "2"]  # fmt: skip
    assert main(argv) == 0
    state, _ = checkpoint.load(checkpoint.list_checkpoints(in_tmp / "runs/co/checkpoints")[-1])
    assert not [k for k in state["objects"]["net"] if "_orig_mod" in k]
    assert main(["train", "--resume", "runs/co", "--total-steps", "600"]) == 0
    assert _last_json(capsys)["agent_steps"] == 600


def test_an_agent_run_counts_agent_steps_throughout(in_tmp, capsys):
    """One step unit: checkpoints, the resume notice and `fovea eval`'s step count agent steps, as the metrics
    do, not vector steps or rollouts (4 envs x 5 steps: one rollout is 20 agent steps)."""
    argv = ["train", "a2c-catch", "--name", "u", "--wandb", "disabled", "--num-envs", "4", "--n-steps", "5",
            "--total-steps", "400", "--checkpoint-every", "200", "--eval-episodes", "0"]  # fmt: skip
    assert main(argv) == 0
    names = [p.name for p in (in_tmp / "runs/u/checkpoints").iterdir()]
    assert sorted(names) == ["step_000000200", "step_000000400"]
    assert "agent steps" in capsys.readouterr().err  # the progress bar's unit
    assert main(["train", "--resume", "runs/u", "--total-steps", "600"]) == 0
    assert "from step_000000400 (step 400)" in capsys.readouterr().err
    assert main(["eval", "runs/u", "--episodes", "1", "--wandb", "disabled"]) == 0
    assert _last_json(capsys)["step"] == 600

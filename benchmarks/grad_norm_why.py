"""Why is PPO's gradient larger in runs with auxiliary heads? Its parts, measured on checkpoints.

Trains ``breakout`` (eager, 1 thread) with and without the heads for a few thousand steps and
several seeds, keeping every checkpoint. For each checkpoint it collects one on-policy rollout
with that checkpoint's agent (training settings: episodic life, clipped rewards), computes GAE
with its own values, and takes PPO's loss at ratio 1 (the first minibatch of an update) apart:

* ``pg``: the clipped surrogate's gradient norm on torso + policy head (and on the torso alone);
* ``vf``: ``vf_coef * value loss`` on torso + value head; ``ent``: ``ent_coef * entropy``;
* ``total``: PPO's whole loss on torso + heads, what ``losses/grad_norm`` logs and the clip sees;
* ``feat``: mean L2 norm of the torso's features, ``vloss``: the value loss itself.

A gradient that grows with the features' scale (heads' weight gradients are features x output
gradient) points at the representation; one that grows in ``vf`` alone at the value targets.

    python benchmarks/grad_norm_why.py                       # 3 seeds x 2 variants, 8,192 steps
    python benchmarks/grad_norm_why.py --analyze             # the table from existing runs

Resumable: finished runs are skipped, a stopped one continues with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
HEADS = ("reward_prediction", "pixel_control", "next_state")
# The heads as every run before 2026-12-04 had them: reward_prediction in UNREAL's replay form on
# raw features, next_state from the replay.
HEADS_ON = [
    "aux.enabled=true",
    "aux.tasks.reward_prediction.source=replay",
    "aux.tasks.reward_prediction.scale_free=false",
    "aux.tasks.next_state.source=replay",
]


def _only(head: str, *extra: str) -> list[str]:
    return [*HEADS_ON, *extra, *(f"aux.tasks.{h}.enabled=false" for h in HEADS if h != head)]


VARIANTS = {
    "heads": HEADS_ON,
    "no_aux": ["aux.enabled=false"],
    # One head at a time: which one grows the features.
    **{f"only_{head}": _only(head) for head in HEADS},
    # The fix: reward_prediction's head reads layer-normalised features (tasks/base.py: scale_free).
    "only_reward_prediction_scale_free": _only(
        "reward_prediction", "aux.tasks.reward_prediction.scale_free=true"
    ),
    # Today's defaults: scale-free reward_prediction, and it and next_state on PPO's minibatch features.
    "heads_now": ["aux.enabled=true"],
}


def train(out: Path, variant: str, seed: int, steps: int) -> Path:
    run = out / "runs" / f"{variant}__{seed}"
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if ckpts and int(ckpts[-1].stem.split("_")[1]) >= steps:
        return run
    if ckpts:  # stopped: the run keeps its config, only the step budget is restated
        args = ["--resume", str(run), f"ppo.total_steps={steps}"]
    else:
        args = ["breakout", *VARIANTS[variant], "--run-dir", str(run), f"ppo.total_steps={steps}"]
        args += [
            "perf.compile=false",
            "log.checkpoint_every=1024",
            "log.keep_checkpoints=1000",
            f"seed={seed}",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "auxrl", "train", *args, "--no-progress"]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return run


def parts(path: Path, rollout_steps: int = 64) -> dict[str, float]:
    """PPO's gradient, taken apart, on one fresh on-policy rollout of this checkpoint's agent."""
    from auxrl import checkpoint
    from auxrl.config import Config, build
    from auxrl.envs import make_envs
    from auxrl.inference import load_agent
    from auxrl.ppo.rollout import compute_gae

    saved = checkpoint.load(path)
    cfg = build(Config, saved["config"])
    agent = load_agent(path, "cpu").model.train()
    torch.manual_seed(0)
    envs = make_envs(cfg.env)
    obs = torch.as_tensor(envs.reset(seed=1))
    frames, actions, logps, values, rewards, term, trunc, valid = [], [], [], [], [], [], [], []
    for _ in range(rollout_steps):
        out = agent.act(obs)
        step = envs.step(out.action.numpy())
        frames.append(obs)
        actions.append(out.action)
        logps.append(out.log_prob)
        values.append(out.value)
        rewards.append(torch.as_tensor(step.reward))
        term.append(torch.as_tensor(step.terminated))
        trunc.append(torch.as_tensor(step.truncated))
        valid.append(torch.as_tensor(~step.reset))
        obs = torch.as_tensor(step.obs)
    next_value = agent.get_value(obs)
    envs.close()
    stack = {k: torch.stack(v) for k, v in dict(v=values, r=rewards, te=term, tr=trunc, ok=valid).items()}
    adv, ret = compute_gae(
        stack["r"],
        stack["v"],
        stack["te"],
        stack["tr"],
        stack["ok"],
        next_value,
        cfg.ppo.gamma,
        cfg.ppo.gae_lambda,
    )
    x = torch.stack(frames).flatten(0, 1)
    a = torch.stack(actions).flatten(0, 1)
    mask = stack["ok"].flatten().float()
    adv, ret = adv.flatten(), ret.flatten()
    n = mask.sum()
    mean = (adv * mask).sum() / n
    adv = (adv - mean) / ((((adv - mean) ** 2 * mask).sum() / (n - 1)).sqrt() + 1e-8)

    dist, value, features = agent(x)
    pg = -(adv * agent.policy.log_prob(dist, a) * mask).sum() / n  # the surrogate at ratio 1
    vloss = 0.5 * (((value - ret) ** 2) * mask).sum() / n
    ent = (agent.policy.entropy(dist) * mask).sum() / n
    p = cfg.ppo
    torso = list(agent.torso.parameters())
    policy, value_head = list(agent.policy.parameters()), list(agent.value.parameters())

    def norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads if g is not None])))

    return {
        "step": int(saved["state"]["global_step"]),
        "feat": float(features.detach().norm(dim=1).mean()),
        "vloss": float(vloss),
        "pg": norm(pg, torso + policy),
        "pg_torso": norm(pg, torso),
        "pg_head": norm(pg, policy),
        "vf": norm(p.vf_coef * vloss, torso + value_head),
        "vf_head": norm(p.vf_coef * vloss, value_head),
        "ent": norm(p.ent_coef * ent, torso + policy),
        "total": norm(pg - p.ent_coef * ent + p.vf_coef * vloss, torso + policy + value_head),
    }


def analyze(out: Path, seeds: list[int]) -> str:
    cache = out / "parts.json"
    table = json.loads(cache.read_text()) if cache.is_file() else {}
    for variant in VARIANTS:
        for seed in seeds:
            for path in sorted((out / "runs" / f"{variant}__{seed}" / "checkpoints").glob("step_*.pt")):
                key = f"{variant}/{seed}/{path.name}"
                if key not in table:
                    table[key] = parts(path)
                    cache.write_text(json.dumps(table, indent=1))
    keys = ["feat", "vloss", "pg", "pg_torso", "pg_head", "vf", "vf_head", "ent", "total"]
    lines = [
        "| variant | steps | n | " + " | ".join(keys) + " |",
        "|---|--:|--:|" + "--:|" * len(keys),
    ]
    for variant in VARIANTS:
        by_step: dict[int, list[dict]] = {}
        for key, row in table.items():
            if key.startswith(variant + "/"):
                by_step.setdefault(row["step"], []).append(row)
        for step in sorted(by_step):
            rows = by_step[step]
            cells = [f"{statistics.mean(r[k] for r in rows):.3f}" for k in keys]
            lines.append(f"| {variant} | {step:,} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clip_table(out: Path, seeds: list[int]) -> str:
    """PPO's clip factor and gradient norm as training logged them (mean over each run's updates,
    then over seeds): ``losses/clip_factor`` = min(1, ppo.max_grad_norm / ||g_ppo||)."""
    from auxrl.plot import read_scalars

    lines = ["| variant | runs | mean clip_factor | mean losses/grad_norm |", "|---|--:|--:|--:|"]
    for variant in VARIANTS:
        clips, norms = [], []
        for seed in seeds:
            run = out / "runs" / f"{variant}__{seed}"
            if not run.is_dir():
                continue
            clips.append(float(read_scalars(run, "losses/clip_factor")[1].mean()))
            norms.append(float(read_scalars(run, "losses/grad_norm")[1].mean()))
        if clips:
            cells = f"{statistics.mean(clips):.2f} | {statistics.mean(norms):.2f}"
            lines.append(f"| {variant} | {len(clips)} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "grad-norm-why")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=8192)
    parser.add_argument("--analyze", action="store_true", help="only the table from existing runs")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.analyze:
        for seed in args.seeds:
            for variant in args.variants:
                print(f"training {variant} seed {seed}", flush=True)
                train(args.out, variant, seed, args.steps)
    text = analyze(args.out, args.seeds) + "\n\n" + clip_table(args.out, args.seeds)
    (args.out / "parts.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""Host syncs of the GPU path, counted on a CPU (issue 30), before and after its changes.

Where no GPU is lent, ``torch.cuda.set_sync_debug_mode`` cannot count them. This counts the
Python calls that make the host wait for the device when their tensor is on CUDA, with
monkeypatches: ``Tensor.item``, ``Tensor.cpu``, ``Tensor.tolist``, ``Tensor.numpy``, ``bool()``,
``float()`` and ``int()`` of a tensor, and ``torch.multinomial`` (``Categorical.sample``'s draw:
its one-sample path checks its input with two ``.item()`` calls inside ATen, where no Python hook
sees them, so each call counts as 2 syncs). Every call is listed with its call site (the first
frame outside torch), so a call on a tensor that lives on the CPU in a CUDA run too (a seed
drawn from torch's CPU generator) can be told apart.

Measured, on the CPU, for the code on ``sys.path`` (``--before REF``: also for ``git archive REF``
of ``auxrl/`` and ``configs/``, run in a subprocess, and both written to ``--out``):

* ``act``: one ``agent.act(obs)`` (nature_cnn, 8 Breakout-shaped frame stacks, 4 actions);
* ``rollout step``: ``collect.collect_rollout`` on CartPole (4 envs, mlp), per step;
* ``update``: ``Learner.update`` on a rollout of 16 steps x 4 envs (atari100k's agent), 1 epoch of 1
  and of 4 minibatches: per minibatch = (4 - 1) / 3, per update = the rest; PPO alone, and with
  reward_prediction + next_state (PPO's minibatch) and pixel_control (replay);
* ``checkpoint``: ``checkpoint.first_non_finite`` on the model and optimizer state of that agent
  after one update.

    OMP_NUM_THREADS=1 python benchmarks/host_syncs.py --before 2db46a5 \\
        --out benchmarks/results/host-syncs-cpu-2026-12-04.md
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "multinomial")


class Counter:
    """Counts the calls above, by kind and by call site, while active."""

    def __init__(self) -> None:
        self.kinds: collections.Counter[str] = collections.Counter()
        self.sites: collections.Counter[str] = collections.Counter()
        self.active = False
        self.host: dict[int, Any] = {}  # what .cpu() returned (host memory), by id, kept alive

    def record(self, kind: str, tensor: Any = None) -> None:
        if not self.active:
            return
        if tensor is not None and id(tensor) in self.host:
            kind += " (host copy)"  # e.g. .tolist() of what .cpu() returned: no second sync
        self.kinds[kind] += 1
        frame = sys._getframe(2)
        while frame is not None and (
            f"{os.sep}torch{os.sep}" in frame.f_code.co_filename or frame.f_code.co_filename == __file__
        ):
            frame = frame.f_back
        site = "?" if frame is None else f"{_short(frame.f_code.co_filename)}:{frame.f_lineno}"
        self.sites[f"{kind} {site}"] += 1

    @contextlib.contextmanager
    def counting(self):
        self.kinds.clear()
        self.sites.clear()
        self.host.clear()
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def snapshot(self, divide: int = 1) -> dict[str, Any]:
        calls = {k: n / divide for k, n in sorted(self.kinds.items())}
        return _with_syncs(calls, {k: n / divide for k, n in sorted(self.sites.items())})


def _short(path: str) -> str:
    for marker in (f"{os.sep}auxrl{os.sep}", f"{os.sep}site-packages{os.sep}"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    return path


def install(counter: Counter) -> None:
    import torch

    for name in KINDS[:-1]:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            counter.record(_name, self)
            result = _original(self, *args, **kwargs)
            if _name == "cpu" and counter.active:
                counter.host[id(result)] = result
            return result

        setattr(torch.Tensor, name, wrapped)
    multinomial = torch.multinomial

    def counted_multinomial(*args, **kwargs):
        counter.record("multinomial")
        return multinomial(*args, **kwargs)

    torch.multinomial = counted_multinomial


def measure() -> dict[str, Any]:
    """Every count, for the auxrl that ``import auxrl`` finds."""
    import gymnasium as gym
    import torch

    import auxrl
    from auxrl import checkpoint
    from auxrl.balance import Balancer
    from auxrl.build import build_model, make_optimizer
    from auxrl.collect import collect_rollout
    from auxrl.config import EnvConfig
    from auxrl.configfile import load_config
    from auxrl.curriculum import plan_stages
    from auxrl.envs import make_envs
    from auxrl.models.agent import build_agent
    from auxrl.ppo.rollout import RolloutStorage
    from auxrl.tasks.combine import AuxTasks

    torch.set_num_threads(1)
    counter = Counter()
    install(counter)
    out: dict[str, Any] = {"auxrl": str(Path(auxrl.__file__).parent)}
    image = gym.spaces.Box(0, 255, (4, 84, 84), "uint8")

    # One act() call.
    torch.manual_seed(0)
    agent = build_agent("nature_cnn", [], image, gym.spaces.Discrete(4))
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    agent.act(obs)  # warm-up
    with counter.counting():
        agent.act(obs)
    out["act"] = counter.snapshot()

    # Rollout steps as the trainer takes them (act, store, send the actions to the envs).
    steps = 32
    envs = make_envs(EnvConfig(id="CartPole-v1", num_envs=4))
    mlp = build_agent("mlp", [64, 64], envs.single_observation_space, envs.single_action_space)
    storage = RolloutStorage(steps, 4, (4,), torch.float32, (), torch.long, torch.device("cpu"))
    storage.next_obs.copy_(torch.from_numpy(envs.reset(seed=0)))
    with counter.counting():
        collect_rollout(envs, mlp, storage, lambda *args: None)
    envs.close()
    out["rollout step"] = counter.snapshot(divide=steps)

    # Minibatch updates: PPO alone, and with three heads.
    def update(minibatches: int, heads: bool) -> tuple[dict[str, Any], Any, Any]:
        cfg = load_config(
            "atari100k",
            ["ppo.num_steps=16", "env.num_envs=4", "aux.batch_size=4", "ppo.update_epochs=1"]
            + [f"ppo.num_minibatches={minibatches}"],
        )
        torch.manual_seed(0)
        model = build_model(cfg, plan_stages(cfg), image, gym.spaces.Discrete(4))
        st = RolloutStorage(16, 4, (4, 84, 84), torch.uint8, (), torch.long, torch.device("cpu"))
        st.obs.random_(0, 256)
        st.next_obs.random_(0, 256)
        st.rewards[::3] = 1.0
        st.advantages.normal_()
        st.returns.normal_()
        names = ("reward_prediction", "next_state", "pixel_control") if heads else ()
        tasks = {n: h for n, h in model.heads.items() if n in names}
        aux = AuxTasks(tasks, cfg.aux, st, seed=0) if tasks else None
        if aux is not None:
            aux.add_rollout(st)
        optimizer = make_optimizer(list(model.parameters()), 1e-4, 1e-5)  # the trainer's (fused) Adam
        weights, balancer, params = (
            {n: 1.0 for n in tasks},
            Balancer(cfg.aux.balance),
            list(model.parameters()),
        )
        try:
            from auxrl.learner import Learner
        except ImportError:  # an auxrl before the learner (--before): its ppo_update
            from auxrl.update import ppo_update

            def learn() -> None:
                ppo_update(cfg.ppo, cfg.aux, model, optimizer, st, aux, weights, balancer, params, 64)
        else:
            learner = Learner(model, optimizer, balancer, params)

            def learn() -> None:
                learner.update(st, cfg.ppo, cfg.aux, aux, weights, 64)

        learn()  # warm-up (and Adam's state for the checkpoint below)
        with counter.counting():
            learn()
        return dict(counter.kinds), model, optimizer

    for heads in (False, True):
        one, _, _ = update(1, heads)
        one_sites = dict(counter.sites)
        four, model, optimizer = update(4, heads)
        four_sites = dict(counter.sites)
        key = "heads" if heads else "ppo"
        out[f"minibatch ({key})"] = _difference(four, one, four_sites, one_sites, 3)
        out[f"update extras ({key})"] = _extras(one, four, one_sites, four_sites)

    # One checkpoint's finiteness check.
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    tensors = sum(1 for v in _tensors(state))
    with counter.counting():
        checkpoint.first_non_finite(state)
    out["checkpoint"] = {**counter.snapshot(), "tensors": tensors}
    return out


def _tensors(obj: Any):
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point():
            yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _with_syncs(calls: dict[str, float], sites: dict[str, float]) -> dict[str, Any]:
    """Syncs on CUDA: every call but those on a host copy, multinomial as 2."""
    syncs = sum(n for k, n in calls.items() if "host" not in k and k != "multinomial")
    return {"syncs": syncs + 2 * calls.get("multinomial", 0), "calls": calls, "sites": sites}


def _difference(four, one, four_sites, one_sites, n) -> dict[str, Any]:
    calls = {k: (four.get(k, 0) - one.get(k, 0)) / n for k in sorted(four.keys() | one.keys())}
    sites = {
        k: (four_sites.get(k, 0) - one_sites.get(k, 0)) / n
        for k in sorted(four_sites.keys() | one_sites.keys())
    }
    return _with_syncs({k: v for k, v in calls.items() if v}, {k: v for k, v in sites.items() if v})


def _extras(one, four, one_sites, four_sites) -> dict[str, Any]:
    """One update's calls that do not grow with its minibatches: 1-minibatch count - per-minibatch."""
    per = _difference(four, one, four_sites, one_sites, 3)
    calls = {k: one.get(k, 0) - per["calls"].get(k, 0) for k in one}
    sites = {k: one_sites.get(k, 0) - per["sites"].get(k, 0) for k in one_sites}
    return _with_syncs({k: v for k, v in calls.items() if v}, {k: v for k, v in sites.items() if v})


def run_before(ref: str) -> dict[str, Any]:
    """``measure()`` on ``git archive <ref>`` of auxrl/ and configs/, in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="auxrl-before-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", ref, "auxrl", "configs"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": tmp, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, __file__, "--json"], env=env, check=True, capture_output=True, text=True, cwd=tmp
        )
        return json.loads(done.stdout.strip().splitlines()[-1])


ROWS = [
    ("act", "one `agent.act(obs)` (8 frame stacks)"),
    ("rollout step", "one rollout step (`collect_rollout`, per step)"),
    ("minibatch (ppo)", "one minibatch, PPO alone"),
    ("minibatch (heads)", "one minibatch, PPO + 3 heads"),
    ("update extras (ppo)", "once per `Learner.update`, PPO alone"),
    ("update extras (heads)", "once per `Learner.update`, PPO + 3 heads"),
    ("checkpoint", "one checkpoint's finiteness check"),
]


def report(before: dict[str, Any] | None, after: dict[str, Any], ref: str | None, command: str) -> str:
    lines = [
        "# Host syncs of the GPU path, counted on a CPU (issue 30)",
        "",
        "Calls that make the host wait for the device when their tensor is on CUDA, counted with",
        "monkeypatches (`benchmarks/host_syncs.py`: `Tensor.item/.cpu/.tolist`, `bool()`/`float()`/",
        "`int()` of a tensor; `torch.multinomial` as 2, its two `.item()` checks inside ATen). No GPU",
        "was lent, so none is a measured CUDA sync: the call sites below say which would be one.",
        "A call on a tensor that `.cpu()` returned is marked `(host copy)` and not counted; one on a",
        "tensor built on the host from such copies is counted (before's checkpoint: its `.tolist()`",
        "of the stacked host copies, so 138 syncs there, not 139). Syncs inside ATen that no Python",
        "hook sees are not counted, except `torch.multinomial`'s two. Outside `Learner.update` the",
        "trainer adds one per update (every logged scalar in one `.tolist()`, auxrl/trainer.py).",
        "",
        "| what | " + (f"before ({ref}) | " if before else "") + "after |",
        "|---|" + ("---|" if before else "") + "---|",
    ]
    for key, label in ROWS:
        cells = [label]
        if before:
            cells.append(_cell(before.get(key)))
        cells.append(_cell(after.get(key)))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Call sites", ""]
    for name, data in ((f"before: git archive {ref}", before), ("after: this checkout", after)):
        if not data:
            continue
        lines += [f"### {name}", ""]
        for key, label in ROWS:
            sites = data[key]["sites"]
            shown = ", ".join(f"`{s}` x{_num(n)}" for s, n in sites.items()) or "none"
            lines.append(f"- {label}: {shown}")
        lines.append("")
    lines += ["## Command", "", "```", command, "```", ""]
    return "\n".join(lines)


def _num(x: float) -> str:
    return f"{x:g}"


def _cell(data: dict[str, Any] | None) -> str:
    if data is None:
        return "-"
    calls = ", ".join(f"{k.strip('_')} {_num(n)}" for k, n in data["calls"].items())
    extra = f" ({data['tensors']} tensors)" if "tensors" in data else ""
    return f"**{_num(data['syncs'])}**" + (f" ({calls})" if calls else "") + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="REF", help="also count for this git ref's auxrl/")
    parser.add_argument("--out", type=Path, help="write the report (Markdown) here, and .json beside it")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON line")
    args = parser.parse_args(argv)
    after = measure()
    if args.json:
        print(json.dumps(after))
        return 0
    before = run_before(args.before) if args.before else None
    command = "OMP_NUM_THREADS=1 python benchmarks/host_syncs.py" + " ".join(
        [""]
        + (["--before", args.before] if args.before else [])
        + (["--out", str(args.out)] if args.out else [])
    )
    text = report(before, after, args.before, command)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(
            json.dumps({"before": before, "after": after}, indent=1) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

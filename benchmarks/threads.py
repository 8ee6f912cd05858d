"""CPU threads: auxrl's default (``perf.threads=0``) against torch's own default, in one run.

Before ``perf.threads`` existed auxrl never set torch's thread count, so torch used one thread per
physical core, beside the Atari emulator's threads on the same cores. This trains, each in a
fresh process with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` unset (they would override both):

* ``cartpole``: the README's command, ``auxrl train cartpole`` (100k steps);
* ``breakout``: ``auxrl train breakout ppo.total_steps=10240`` (10 updates, all three heads);

once with ``perf.threads=<torch's default here>`` (``torch_default``: what auxrl did before) and
once with ``perf.threads=0`` (``auto``: the new default), plus explicit counts given with
``--also``. Each row: wall seconds of the whole command (start-up included), CPU seconds of the
process, steady SPS (between the first and the last update, from the TensorBoard events' wall
times), and the final return (mean of the last 20 episodes). Measure on an otherwise idle
machine: timings taken beside other work say little about either setting.

Example::

    python benchmarks/threads.py                      # both configs, torch_default vs auto
    python benchmarks/threads.py --configs breakout --also 1 2 --repeats 2

Writes ``benchmarks/results/threads-<cpu>-<date>.md`` and ``.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning import REPO_ROOT, final_return, setup_info, use_checkout  # noqa: E402
from throughput import output_paths, steady_sps  # noqa: E402

CONFIGS = {
    "cartpole": [],  # the README's command as it is
    "breakout": ["ppo.total_steps=10240"],
}
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def torch_default_threads() -> int:
    """torch's thread count in a fresh process without thread variables (what auxrl used to get)."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def measure(config: str, overrides: list[str], label: str, workdir: Path) -> dict[str, Any]:
    run_dir = workdir / f"{config}__{label}"
    command = [
        sys.executable,
        *("-m", "auxrl.cli", "train", config, *overrides),
        *("--run-dir", str(run_dir), "--device", "cpu", "--no-progress", "--overwrite"),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(command, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row: dict[str, Any] = {
        "config": config,
        "variant": label,
        "command": shlex.join(["auxrl", *command[3:]]),
        "wall_s": round(wall, 1),
        "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
    }
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return row
    threads = [ln for ln in proc.stdout.splitlines() if "Torch CPU threads:" in ln]
    row["start_line"] = threads[0] if threads else ""
    sps = steady_sps(run_dir)
    final, _, counted = final_return(run_dir, 20)
    row.update(steady_sps=None if sps is None else round(sps, 1), final_return=final, episodes=counted)
    return row


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        "# CPU threads: torch's default vs auxrl's perf.threads=0",
        "",
        f"Machine: {meta['cpu']} ({meta['cores']} cores); {meta['time']}; "
        f"{', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"torch's default thread count here: {meta['torch_default_threads']}.",
        f"Command: `{meta['command']}`",
        "",
        "| config | variant | wall s | CPU s | steady SPS | final return | what auxrl printed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['config']} | {r['variant']} | {r['wall_s']} | {r['cpu_s']} | failed: {r['error']} |||"
            )
            continue
        ret = "n/a" if r["final_return"] is None else f"{r['final_return']:.1f}"
        sps = "n/a" if r["steady_sps"] is None else f"{r['steady_sps']:,.0f}"
        found = re.search(r"Torch CPU threads: (\d+(?: \([^)]*\))?)", r["start_line"])
        printed = found.group(1) if found else "?"
        lines.append(
            f"| {r['config']} | {r['variant']} | {r['wall_s']} | {r['cpu_s']} | {sps} | {ret} "
            f"| threads {printed} |"
        )
    lines += [
        "",
        "Wall: the whole `auxrl train` command, start-up included. CPU: user + system seconds of the "
        "process. Steady SPS: env steps per second between the first and the last update.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="what to train"
    )
    parser.add_argument("--also", nargs="*", type=int, default=[], help="explicit perf.threads values to add")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant (alternating)")
    parser.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (key=value)")
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    use_checkout()
    default = torch_default_threads()
    variants = {"torch_default": f"perf.threads={default}", "auto": "perf.threads=0"}
    variants.update({f"threads={n}": f"perf.threads={n}" for n in args.also})
    meta = {
        **setup_info("cpu"),
        "torch_default_threads": default,
        "command": shlex.join(
            ["python", "benchmarks/threads.py", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="auxrl-threads-") as tmp:
        for config in args.configs:
            for repeat in range(args.repeats):
                for label, override in variants.items():
                    row = measure(config, [*CONFIGS[config], *args.extra, override], label, Path(tmp))
                    row["repeat"] = repeat
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    slug = "".join(c if c.isalnum() else "-" for c in meta["cpu"].lower()).strip("-")[:40]
    md_path, json_path = output_paths(args.out_dir, f"threads-{slug}-{dt.date.today().isoformat()}")
    text = markdown(meta, rows)
    md_path.write_text(text)
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

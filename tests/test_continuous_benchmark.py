"""benchmarks/continuous.py: its runs as a plan for auxrl study's runner (which it skips, resumes or
starts, with which config), the first runner's scores adopted, and what its table lists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from auxrl.study.runner import StudyRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import continuous  # noqa: E402


def fake_run(run_dir: Path, step: int | None = None, result_step: int | None = None) -> None:
    run_dir.mkdir(parents=True)
    if step is not None:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / f"step_{step:012d}.pt").write_bytes(b"")
        (run_dir / "checkpoints" / "latest").write_text(f"step_{step:012d}.pt")
    if result_step is not None:  # scored by the first runner: result.json
        result = {"task": "pendulum", "env_id": "Pendulum-v1", "seed": int(run_dir.name[-1])}
        result |= {"step": result_step, "final_return": -150.0, "eval": {"score": -160.0, "std": 1.0}}
        (run_dir / "result.json").write_text(json.dumps(result | {"minutes": 9.0}))
        curve = {"tag": "charts/episodic_return", "step": [100, 200, 300], "value": [-500.0, -140.0, -160.0]}
        (run_dir / "curve.json").write_text(json.dumps(curve))


def test_the_plan_skips_finished_and_committed_runs_resumes_the_rest_and_reports(tmp_path):
    task = continuous.Task("pendulum", {"v5": "Pendulum-v1"}, steps=4096)
    plan = continuous.ContinuousPlan([task], [1, 2, 3, 4, 5, 6], "v4")
    fake_run(tmp_path / "runs" / "pendulum__1", 4096, 4096)  # trained and scored
    fake_run(tmp_path / "runs" / "pendulum__2", None, 4096)  # committed: no checkpoint left
    fake_run(tmp_path / "runs" / "pendulum__3", 2048)  # interrupted
    fake_run(tmp_path / "runs" / "pendulum__4", 4096)  # trained, not scored
    fake_run(tmp_path / "runs" / "pendulum__5")  # killed before its first checkpoint
    continuous.adopt_result_json(tmp_path / "runs")
    assert json.loads((tmp_path / "runs" / "pendulum__1" / "score.json").read_text())["score"] == -160.0
    runner = StudyRunner(plan, tmp_path, backend=None, threads=1, device="cpu")  # type: ignore[arg-type]
    assert [runner.status(r) for r in plan.runs()] == ["done", "done", "resume", "score", "restart", "fresh"]
    meta = {"cpu": "cpu", "cores": 2, "device_name": "cpu", "date": "today", "versions": {}, "command": "c"}
    meta["env_version"] = "v4"
    text = continuous.analyze(tmp_path, continuous.ContinuousPlan([task], [1, 2, 3], "v4"), meta)
    row = "| pendulum | Pendulum-v1 | none published | -266.7 ± 0.0 | -160.0 ± 0.0 "  # mean of the 3 returns
    row += "| 1: -266.7, 2: -266.7 | 9 |"
    assert row in text
    assert "Not finished yet (the same command continues them): pendulum__3" in text


def test_a_v4_run_trains_the_shipped_config_on_the_v4_env():
    hopper = continuous.TASKS["hopper"]
    plan = continuous.ContinuousPlan([hopper], [7], "v4")
    (run,) = plan.runs()
    args = plan.train_args(run, Path("runs"))
    assert run.name == "hopper__7" and run.env == "Hopper-v4" and args[0].endswith("configs/hopper.yaml")
    assert {"seed=7", "ppo.total_steps=1000000", "env.id=Hopper-v4", "name=hopper"} <= set(args[1:])
    (v5,) = continuous.ContinuousPlan([hopper], [7], "v5").runs()
    assert not any(a.startswith("env.id=") for a in plan.train_args(v5, Path("runs"))[1:])

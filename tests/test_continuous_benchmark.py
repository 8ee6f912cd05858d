"""benchmarks/continuous.py: which runs it skips, resumes or starts, and what its table lists."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import continuous  # noqa: E402


def fake_run(run_dir: Path, step: int | None = None, result_step: int | None = None) -> None:
    run_dir.mkdir(parents=True)
    if step is not None:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / f"step_{step:012d}.pt").write_bytes(b"")
        (run_dir / "checkpoints" / "latest").write_text(f"step_{step:012d}.pt")
    if result_step is not None:
        result = {"task": "pendulum", "env_id": "Pendulum-v1", "seed": int(run_dir.name[-1])}
        result |= {"step": result_step, "final_return": -150.0, "eval": {"score": -160.0}, "minutes": 9.0}
        (run_dir / "result.json").write_text(json.dumps(result))


def test_status_skips_finished_and_committed_runs_and_resumes_the_rest(tmp_path):
    runner = continuous.Runner(tmp_path, "v4", "cpu", jobs=1)
    task = continuous.Task("pendulum", {"v5": "Pendulum-v1"}, steps=4096)
    fake_run(tmp_path / "runs" / "pendulum__1", 4096, 4096)  # trained and scored
    fake_run(tmp_path / "runs" / "pendulum__2", None, 4096)  # committed: no checkpoint left
    fake_run(tmp_path / "runs" / "pendulum__3", 2048)  # interrupted
    fake_run(tmp_path / "runs" / "pendulum__4", 4096)  # trained, not scored
    fake_run(tmp_path / "runs" / "pendulum__5")  # killed before its first checkpoint
    assert [runner.status(task, s) for s in (1, 2, 3, 4, 5, 6)] == [
        "done", "done", "resume", "eval", "fresh", "fresh",
    ]  # fmt: skip
    meta = {"cpu": "cpu", "cores": 2, "device_name": "cpu", "date": "today", "versions": {}, "command": "c"}
    meta["env_version"] = "v4"
    text = continuous.analyze(tmp_path, [(task, s) for s in (1, 2, 3)], meta)
    row = "| pendulum | Pendulum-v1 | none published | -150.0 ± 0.0 | -160.0 ± 0.0 "
    row += "| 1: -150.0, 2: -150.0 | 9 |"
    assert row in text
    assert "Not finished yet (the same command continues them): pendulum__3" in text

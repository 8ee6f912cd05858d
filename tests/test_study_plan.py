"""The study runner beyond a spec's matrix: probes of Atari runs (a spec's probe_frames), and a
benchmark's own plan whose runs wait for others (benchmarks/multitask.py's transfer runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import TINY_RUN

from auxrl.configfile import resolve_config_path
from auxrl.study.runner import StudyRunner, run_study
from auxrl.study.scores import ATARI_100K_GAMES, HUMAN_SCORES, RANDOM_SCORES, human_normalized
from auxrl.study.spec import Run, load_spec
from auxrl.study.state import run_status, write_json

pytestmark = pytest.mark.usefixtures("one_thread")


def test_human_normalized_score_by_hand():
    assert human_normalized("Breakout", 1.7) == 0.0
    assert human_normalized("Breakout", 30.5) == pytest.approx(1.0)
    # MsPacman: random 307.3, human 6951.6 -> (1000 - 307.3) / 6644.3
    assert human_normalized("MsPacman", 1000.0) == pytest.approx(692.7 / 6644.3)
    assert human_normalized("Pong", -20.7) == 0.0  # negative reference scores
    assert len(ATARI_100K_GAMES) == 26 and set(RANDOM_SCORES) == set(HUMAN_SCORES) == set(ATARI_100K_GAMES)
    with pytest.raises(KeyError, match="Atari 100k games"):
        human_normalized("Tetris", 1.0)


# ------------------------------------------------------------------------------ probes


def fake_scored(run_dir: Path, step: int, probed: int | None = None) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / f"step_{step:012d}.pt").write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text(f"step_{step:012d}.pt")
    write_json(run_dir / "score.json", {"score": 1.0, "std": 0.0, "episodes": 10, "step": step})
    if probed is not None:
        write_json(run_dir / "probe.json", {"global_step": probed, "summary": {"f1_mean": 0.5}})


def test_a_spec_with_probe_frames_probes_its_atari_runs_with_labels(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "base: atari100k\nenvs: [ALE/Breakout-v5, ALE/Kangaroo-v5]\nvariants: {no_aux: [aux.enabled=false]}\n"
        "seeds: [1]\nsteps: 4096\nnormalize: hns\nprobe_frames: 2000\n"
    )
    study = load_spec(spec)
    runner = StudyRunner(study, tmp_path / "o", backend=None, threads=1, device="cpu")  # type: ignore[arg-type]
    breakout, kangaroo = Run("ALE/Breakout-v5", "no_aux", 1), Run("ALE/Kangaroo-v5", "no_aux", 1)
    # Breakout has AtariARI labels: trained, scored, then probed; Kangaroo has none: not probed.
    commands = runner.work(breakout, "fresh").commands
    assert commands[0][3] == "train" and "auxrl.study.score" in commands[1]
    assert commands[2][3:5] == ("probe", str((tmp_path / "o" / "runs" / breakout.name).resolve()))
    assert commands[2][5:9] == ("--frames", "2000", "--seed", "0")
    assert len(runner.work(kangaroo, "fresh").commands) == 2
    # A scored run without its probe (or with the probe of another checkpoint) is only probed.
    fake_scored(tmp_path / "o" / "runs" / breakout.name, 4096)
    fake_scored(tmp_path / "o" / "runs" / kangaroo.name, 4096)
    assert runner.status(breakout) == "probe" and runner.status(kangaroo) == "done"
    assert [c[3] for c in runner.work(breakout, "probe").commands] == ["probe"]
    write_json(tmp_path / "o" / "runs" / breakout.name / "probe.json", {"global_step": 2048})
    assert runner.status(breakout) == "probe"
    write_json(tmp_path / "o" / "runs" / breakout.name / "probe.json", {"global_step": 4096})
    assert runner.status(breakout) == "done"


# ------------------------------------------------------------------------------ a benchmark's plan


@dataclass(frozen=True)
class ToyRun:
    name: str
    after: str | None = None  # the run it starts from
    bad: bool = False  # its config is refused: training fails
    env: str = "CartPole-v1"
    variant: str = "toy"
    seed: int = 1


class ToyPlan:
    """Two CartPole runs, the second starting from the first's torso (as a transfer run does)."""

    eval_episodes = 2

    def __init__(self, runs: list[ToyRun]) -> None:
        self._runs = runs

    def runs(self) -> list[ToyRun]:
        return self._runs

    def describe(self) -> str:
        return f"{len(self._runs)} toy runs"

    def steps_of(self, run: ToyRun) -> int:
        return 512

    def train_args(self, run: ToyRun, runs_dir: Path) -> list[str]:
        args = [str(resolve_config_path("cartpole")), *TINY_RUN, "perf.threads=1"]
        if run.after is not None:
            args += [f"model.init_from={runs_dir / run.after}", "model.init_modules=[torso]"]
        return args + (["ppo.lr=-1"] if run.bad else [])

    def ready(self, run: ToyRun, runs_dir: Path) -> bool:
        return run.after is None or run_status(runs_dir / run.after, 512) == "done"

    def probe_frames(self, run: ToyRun) -> int | None:
        return None


def test_a_plans_run_waits_for_the_run_it_starts_from(tmp_path, capsys):
    # Listed first, the dependent run still starts second, once its source is trained and scored.
    plan = ToyPlan([ToyRun("b", after="a"), ToyRun("a")])
    assert run_study(plan, tmp_path, jobs=2, device="cpu") == 0
    first = json.loads((tmp_path / "runs" / "a" / "score.json").read_text())
    second = json.loads((tmp_path / "runs" / "b" / "score.json").read_text())
    assert first["step"] == second["step"] == 512 and first["date"] <= second["date"]
    config = (tmp_path / "runs" / "b" / "config.yaml").read_text()
    assert str(tmp_path / "runs" / "a") in config  # trained from a's torso
    assert "2 toy runs" in capsys.readouterr().out
    # Done: the same command does nothing.
    assert run_study(plan, tmp_path, jobs=2, device="cpu") == 0
    assert "2 done" in capsys.readouterr().out


def test_a_run_whose_source_failed_fails_instead_of_waiting_forever(tmp_path, capsys):
    plan = ToyPlan([ToyRun("a", bad=True), ToyRun("b", after="a")])
    assert run_study(plan, tmp_path, jobs=2, device="cpu") == 1
    out = capsys.readouterr().out
    assert "FAILED a (train exited with code 2)" in out
    assert "FAILED b: it waits for a run that did not finish" in out
    assert not (tmp_path / "runs" / "b").exists()

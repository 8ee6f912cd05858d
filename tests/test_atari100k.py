"""The pure pieces of benchmarks/atari100k.py: scores, plan, run-directory decisions, analysis."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import atari100k as suite  # noqa: E402
import atari100k_analysis as analysis  # noqa: E402


def test_human_normalized_score_by_hand():
    assert analysis.human_normalized("Breakout", 1.7) == 0.0
    assert analysis.human_normalized("Breakout", 30.5) == pytest.approx(1.0)
    # MsPacman: random 307.3, human 6951.6 -> (1000 - 307.3) / 6644.3
    assert analysis.human_normalized("MsPacman", 1000.0) == pytest.approx(692.7 / 6644.3)
    assert analysis.human_normalized("Pong", -20.7) == 0.0  # negative reference scores
    assert len(analysis.ATARI_100K_GAMES) == 26
    assert set(analysis.RANDOM_SCORES) == set(analysis.HUMAN_SCORES) == set(analysis.ATARI_100K_GAMES)
    with pytest.raises(KeyError, match="Atari 100k games"):
        analysis.human_normalized("Tetris", 1.0)


def test_plan_is_seed_major_with_no_aux_first():
    runs = suite.plan_runs("final", ["Breakout", "Boxing"], [1, 2], ["norm", "no_aux"])
    assert [r.name for r in runs[:4]] == [
        "Breakout__no_aux__1",
        "Breakout__norm__1",
        "Boxing__no_aux__1",
        "Boxing__norm__1",
    ]
    assert len(runs) == 8 and runs[-1].name == "Boxing__norm__2"
    overrides = runs[1].overrides()
    assert "env.id=ALE/Breakout-v5" in overrides and "aux.balance.method=norm" in overrides
    assert "aux.enabled=false" in runs[0].overrides() and runs[0].kind == "no_aux"
    # the screening and the final comparison use different seeds
    assert not set(suite.SCREEN_SEEDS) & set(suite.FINAL_SEEDS)
    assert set(suite.FINAL_GAMES) <= set(analysis.ATARI_100K_GAMES) and len(suite.FINAL_GAMES) >= 6


def fake_run(
    run_dir: Path, step: int | None = None, eval_step: int | None = None, probe_step: int | None = None
) -> Path:
    """A run directory with an (empty) checkpoint file at ``step``, an eval.json for ``eval_step``
    and a probe.json for ``probe_step``."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("name: no_aux\n")
    if step is not None:
        (run_dir / "checkpoints").mkdir()
        (run_dir / "checkpoints" / f"step_{step:012d}.pt").write_bytes(b"")
        (run_dir / "checkpoints" / "latest").write_text(f"step_{step:012d}.pt")
    if eval_step is not None:
        (run_dir / "eval.json").write_text(json.dumps({"score": 12.0, "step": eval_step}))
    if probe_step is not None:
        (run_dir / "probe.json").write_text(json.dumps({"global_step": probe_step, "summary": {}}))
    return run_dir


def test_run_status_decides_skip_resume_eval_or_fresh(tmp_path):
    assert suite.run_status(tmp_path / "absent", 4096) == "fresh"
    assert suite.run_status(fake_run(tmp_path / "killed_early"), 4096) == "fresh"
    assert suite.run_status(fake_run(tmp_path / "interrupted", 2048), 4096) == "resume"
    assert suite.run_status(fake_run(tmp_path / "trained", 4352), 4096) == "eval"
    assert suite.run_status(fake_run(tmp_path / "scored", 4352, 4352), 4096) == "done"
    # scored on an earlier checkpoint (e.g. the run was extended): score again
    assert suite.run_status(fake_run(tmp_path / "stale", 8192, 4352), 4096) == "eval"
    assert suite.checkpoint_step(tmp_path / "interrupted") == 2048
    # finished in an earlier session: eval.json and events committed, checkpoints not
    assert suite.run_status(fake_run(tmp_path / "committed", None, 4352), 4096) == "done"
    assert suite.run_status(fake_run(tmp_path / "committed_short", None, 2048), 4096) == "fresh"
    # the analysis counts scored and committed runs (a fresh clone has no checkpoints), not stale ones
    runs = tmp_path / "runs"
    fake_run(runs / "Breakout__no_aux__1", None, 4352)  # committed
    fake_run(runs / "Breakout__no_aux__2", 4352, 4352)  # scored
    fake_run(runs / "Breakout__no_aux__3", 8192, 4352)  # stale
    fake_run(runs / "Breakout__no_aux__4", 2048)  # interrupted
    assert [(s.seed, s.score) for s in suite.collect_scores(runs)] == [(1, 12.0), (2, 12.0)]
    # results.md's "runs: started to ..." ends when the last run was scored, not at the analysis
    assert suite.last_scored(runs) == "?"
    for seed, date in ((1, "2026-11-30T20:48:01+00:00"), (2, "2026-11-30T09:00:00+00:00")):
        path = runs / f"Breakout__no_aux__{seed}" / "eval.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | {"date": date}))
    assert suite.last_scored(runs) == "2026-11-30T20:48:01+00:00"


def test_runner_starts_resumes_scores_skips_and_cleans(tmp_path, monkeypatch):
    runner = suite.Runner(tmp_path, "atari100k", ["ppo.total_steps=4096"], 4096, "cpu", jobs=2, threads=1)
    spawned = []
    monkeypatch.setattr(runner, "_spawn", lambda spec, run_dir, stage, cmd: spawned.append((stage, cmd)) or
                        suite.Job(spec, run_dir, stage, proc=None, log=tmp_path / "log"))  # fmt: skip
    runs = suite.plan_runs("screen", ["Breakout"], [101, 102, 103], ["no_aux", "heads"])
    fake_run(tmp_path / "runs" / runs[0].name, 4096, 4096, 4096)  # done (scored, probed)
    fake_run(tmp_path / "runs" / runs[1].name, 4096)  # trained, not scored
    fake_run(tmp_path / "runs" / runs[2].name, 2048)  # interrupted
    leftover = fake_run(tmp_path / "runs" / runs[3].name)  # killed before its first checkpoint
    fake_run(tmp_path / "runs" / runs[4].name, 4096, 4096)  # scored, not probed (Breakout: AtariARI)
    for spec in runs:
        runner._start(spec)
    assert runner.done == 1
    stages = [stage for stage, _ in spawned]
    assert stages == ["eval", "train", "train", "probe", "train"]
    probe = spawned[3][1]
    assert probe[probe.index("probe") + 1].endswith(runs[4].name) and "--frames" in probe
    resume, fresh = spawned[1][1], spawned[2][1]
    assert resume[resume.index("--resume") + 1].endswith(runs[2].name) and "--no-progress" in resume
    assert "--run-dir" in fresh and "seed=102" in fresh and "aux.enabled=true" in fresh
    assert not leftover.exists()  # deleted, trained from scratch
    assert spawned[0][1][-4:-2] == ["--episodes", "10"]


def test_parse_eval_output():
    text = "Run directory ...\nALE/Breakout-v5: 10 episodes, score 12.30 +- 4.50 (min 5.0, max 21.0)\n"
    assert suite.parse_eval_output(text) == {
        "score": 12.3,
        "std": 4.5,
        "min": 5.0,
        "max": 21.0,
        "episodes": 10,
    }
    with pytest.raises(ValueError):
        suite.parse_eval_output("Traceback ...")


def synthetic_scores() -> list[analysis.Score]:
    """3 games x 3 seeds; ``heads`` scores 15% of the human-random gap more than ``no_aux``."""
    scores = []
    for game in ("Breakout", "Boxing", "MsPacman"):
        gap = analysis.HUMAN_SCORES[game] - analysis.RANDOM_SCORES[game]
        for seed, base in zip((1, 2, 3), (0.1, 0.2, 0.3), strict=True):
            scores.append(analysis.Score(game, "no_aux", seed, analysis.RANDOM_SCORES[game] + base * gap))
            scores.append(
                analysis.Score(game, "heads", seed, analysis.RANDOM_SCORES[game] + (base + 0.15) * gap)
            )
    return scores


def test_analysis_of_synthetic_scores_gives_iqm_cis_and_improvement():
    pytest.importorskip("rliable.library", exc_type=ImportError)
    planned = [
        (g, v, s) for s in (1, 2, 3) for g in ("Breakout", "Boxing", "MsPacman") for v in ("no_aux", "heads")
    ]
    a = analysis.analyze_phase("final", planned, synthetic_scores(), reps=300)
    assert a.complete and a.block.k == 3 and a.block.games == ["Breakout", "Boxing", "MsPacman"]
    # every game has HNS 0.1, 0.2, 0.3 for no_aux: the IQM (middle half of the 9 runs) is 0.2
    iqm, lo, hi = a.aggregates["no_aux"]["IQM"]
    assert iqm == pytest.approx(0.2) and lo <= iqm <= hi
    assert a.aggregates["heads"]["mean"][0] == pytest.approx(0.35)
    assert a.aggregates["heads"]["median"][0] == pytest.approx(0.35)
    # P(heads > no_aux) on each game, by hand: heads {0.25, 0.35, 0.45} vs no_aux {0.1, 0.2, 0.3}:
    # 0.25 beats 2 of 3, 0.35 and 0.45 beat all 3 -> 8 / 9
    p, plo, phi = a.improvement["heads"]
    assert p == pytest.approx(8 / 9) and 0.0 <= plo <= p <= phi <= 1.0
    assert analysis.best_variant(a.aggregates) == "heads"
    # the same scores give the same intervals (rliable ignores its random_state), and the global
    # numpy generator is left as it was
    before = np.random.get_state()[1].copy()
    again = analysis.analyze_phase("final", planned, synthetic_scores(), reps=300)
    assert again.aggregates == a.aggregates and again.improvement == a.improvement
    assert (np.random.get_state()[1] == before).all()


def test_probe_summary_means_every_variants_probe_f1_over_the_matched_games(tmp_path):
    """Probe F1 beside the returns: the mean over games and seeds of each variant's probe.json
    (f1_mean and its random floor), on the games where every planned run was probed."""
    pytest.importorskip("rliable.library", exc_type=ImportError)
    planned = [
        (g, v, s) for s in (1, 2, 3) for g in ("Breakout", "Boxing", "MsPacman") for v in ("no_aux", "heads")
    ]
    a = analysis.analyze_phase("final", planned, synthetic_scores(), reps=100)
    for game, variant, seed in planned:
        if game == "MsPacman" and seed == 3 and variant == "heads":
            continue  # one run not probed: MsPacman leaves the probe block
        run = tmp_path / f"{game}__{variant}__{seed}"
        run.mkdir()
        f1 = (0.5 if variant == "no_aux" else 0.6) + 0.01 * seed
        summary = {"f1_mean": f1, "random_f1_mean": 0.55}
        (run / "probe.json").write_text(json.dumps({"summary": summary}))
    probe = suite.probe_summary(tmp_path, a, reps=100)
    # MsPacman keeps its two complete seeds, but a matched block takes as many seeds on every game
    assert probe["games"] == ["Breakout", "Boxing", "MsPacman"]
    assert probe["seeds"] == {"Breakout": [1, 2], "Boxing": [1, 2], "MsPacman": [1, 2]}
    mean, low, high = probe["trained"]["heads"]
    assert mean == pytest.approx(0.615) and low <= mean <= high  # seeds 1, 2: 0.61, 0.62
    assert probe["trained"]["no_aux"][0] == pytest.approx(0.515)
    assert probe["random_floor"]["heads"][0] == pytest.approx(0.55)
    assert "| heads | 0.615 [" in suite.probe_markdown({"final": probe})


def test_analysis_with_partial_results_uses_matched_block():
    pytest.importorskip("rliable.library", exc_type=ImportError)
    scores = [s for s in synthetic_scores() if not (s.variant == "heads" and s.seed == 3)]
    scores = [s for s in scores if not (s.game == "MsPacman" and s.seed > 1)]
    planned = [
        (g, v, s) for s in (1, 2, 3) for g in ("Breakout", "Boxing", "MsPacman") for v in ("no_aux", "heads")
    ]
    a = analysis.analyze_phase("final", planned, scores, reps=200)
    assert not a.complete and len(a.missing) == 18 - len(scores)
    # matched seeds: Breakout 1-2, Boxing 1-2, MsPacman 1 -> 2 games x 2 seeds keeps the most runs
    assert a.block.games == ["Breakout", "Boxing"] and a.block.seeds == {"Breakout": [1, 2], "Boxing": [1, 2]}
    assert a.block.hns["heads"].shape == (2, 2)
    md = analysis.per_game_table(a) + analysis.aggregate_table(a)
    assert any(line.startswith("| MsPacman |") for line in md)
    empty = analysis.analyze_phase("screen", planned, [], reps=10)
    assert empty.aggregates == {} and analysis.aggregate_table(empty)[0].startswith("No matched")


def test_settings_check_refuses_changed_settings_but_not_new_keys(capsys):
    suite_json = {"settings": {"ppo.lr": 0.00025, "ppo.num_steps": 32}}
    suite.check_settings(suite_json, {"ppo.lr": 0.00025, "ppo.num_steps": 32, "aux.new_knob": 1})
    assert "aux.new_knob" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="ppo.num_steps"):
        suite.check_settings(suite_json, {"ppo.lr": 0.00025, "ppo.num_steps": 128})
    settings = suite.resolved_config("atari100k", [], 100_000)
    assert settings["ppo.total_steps"] == 100_000 and not set(suite.PER_RUN_KEYS) & set(settings)

"""``auxrl study report DIR --spec SPEC --out OUT``: a benchmarks/atari100k.py suite's committed runs
(``<Game>__<variant>__<seed>``, scored in ``eval.json``) re-reported as the study its spec describes,
with the numbers auxrl.study.analysis gives for those scores; and the shipped Atari 100k specs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from auxrl.cli import main
from auxrl.configfile import load_config
from auxrl.study import analysis
from auxrl.study.report import write_report
from auxrl.study.scores import human_normalized
from auxrl.study.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "configs" / "studies"
COMMITTED = ROOT / "benchmarks" / "results" / "atari100k-cpu-2026-11-30"
# benchmarks/atari100k.py's --reps default (and bootstrap seed 0), with which its results.md was written.
SUITE_REPS = 1000

GAMES = ("Breakout", "Boxing", "MsPacman")
VARIANTS = ("no_aux", "norm")
SEEDS = (1, 2, 3)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def fake_suite(folder: Path) -> dict[tuple[str, str, int], float]:
    """A suite folder as benchmarks/atari100k.py leaves it once committed: eval.json per run (no
    checkpoints), its own results.json and suite.json, and runs no spec below plans."""
    rng = np.random.default_rng(7)
    scores = {}
    for game in GAMES:
        for variant in VARIANTS:
            for seed in SEEDS:
                score = round(float(rng.uniform(0.0, 900.0 if game == "MsPacman" else 20.0)), 1)
                scores[(game, variant, seed)] = score
                data = {"score": score, "std": 1.0, "episodes": 10, "step": 100096, "game": game}
                write_json(folder / "runs" / f"{game}__{variant}__{seed}" / "eval.json", data)
    # Screening runs (another variant, other seeds), and one run trained past its score: not part of it.
    write_json(folder / "runs" / "MsPacman__cosine__101" / "eval.json", {"score": 9e9, "step": 100096})
    write_json(folder / "runs" / "MsPacman__no_aux__101" / "eval.json", {"score": 9e9, "step": 100096})
    stale = folder / "runs" / "Boxing__norm__4"
    write_json(stale / "eval.json", {"score": 9e9, "step": 100096})
    (stale / "checkpoints").mkdir()
    (stale / "checkpoints" / "step_120000.pt").write_bytes(b"")
    write_json(folder / "suite.json", {"commands": ["python benchmarks/atari100k.py --phase final --jobs 2"]})
    write_json(folder / "results.json", {"metadata": {}, "phases": {}})  # the suite's own
    return scores


def write_spec(folder: Path, seeds: tuple[int, ...] = SEEDS) -> Path:
    spec = {
        "base": "atari100k",
        "envs": [f"ALE/{g}-v5" for g in GAMES],
        "variants": {
            "no_aux": ["aux.enabled=false"],
            "norm": ["aux.enabled=true", "aux.balance.method=norm"],
        },
        "baseline": "no_aux",
        "seeds": list(seeds),
        "steps": 100000,
        "normalize": "hns",
    }
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def as_tuple(x: dict) -> tuple[float, float, float]:
    return (x["point"], x["lower"], x["upper"])


def test_a_suite_folder_rereports_with_the_numbers_of_its_scores(tmp_path):
    suite, out = tmp_path / "suite", tmp_path / "report"
    scores = fake_suite(suite)
    before = {p: p.read_bytes() for p in suite.rglob("*") if p.is_file()}

    write_report(suite, reps=200, plots=False, spec_file=write_spec(tmp_path), out=out)

    # Straight from the scores: [seeds, games] human-normalised, spec order.
    hns = {
        v: np.array([[human_normalized(g, scores[(g, v, s)]) for g in GAMES] for s in SEEDS])
        for v in VARIANTS
    }
    expected = analysis.aggregate_estimates(hns, gap=True, reps=200, seed=0)
    expected_p = analysis.improvement_estimates(hns, "no_aux", reps=200, seed=0)
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == results["planned"] == 18 and results["missing"] == []
    assert results["block"]["envs"] == [f"ALE/{g}-v5" for g in GAMES]
    for v in VARIANTS:
        for metric, interval in expected[v].items():
            assert as_tuple(results["aggregates"][v][metric]) == interval, (v, metric)
    assert as_tuple(results["probability_of_improvement"]["norm"]) == expected_p["norm"]
    runs = {r["run"]: r for r in results["runs"]}
    assert runs["MsPacman-v5__norm__2"]["dir"] == "MsPacman__norm__2"
    assert {r["score_file"] for r in runs.values()} == {"eval.json"}
    assert runs["MsPacman-v5__norm__2"]["score"] == scores[("MsPacman", "norm", 2)]

    report = (out / "report.md").read_text()
    assert "as the runs of the spec" in report and "All 18 finished runs were scored by" in report
    assert "python benchmarks/atari100k.py --phase final --jobs 2" in report  # the suite's commands
    assert f"auxrl study report {suite} --spec" in report and "--reps 200" in report
    # Nothing was written into the suite's folder.
    assert before == {p: p.read_bytes() for p in suite.rglob("*") if p.is_file()}


def test_a_run_trained_past_its_eval_is_not_finished(tmp_path):
    suite, out = tmp_path / "suite", tmp_path / "report"
    fake_suite(suite)
    write_report(suite, reps=100, plots=False, spec_file=write_spec(tmp_path, seeds=(1, 2, 3, 4)), out=out)
    results = json.loads((out / "results.json").read_text())
    assert "Boxing-v5__norm__4" in results["missing"] and results["finished"] == 18
    assert results["block"]["seeds"]["ALE/Boxing-v5"] == [1, 2, 3]


def test_a_suite_curve_json_is_a_curve(tmp_path):
    # benchmarks/atari100k.py's curve.json: {"step": [...], "episodic_return": [...]}, no tag
    write_json(tmp_path / "curve.json", {"step": [0, 8, 16], "episodic_return": [1.0, 2.0, 4.0]})
    steps, returns = analysis.read_curve(tmp_path)
    assert steps.tolist() == [0, 8, 16] and returns.tolist() == [1.0, 2.0, 4.0]
    assert analysis.read_curve(tmp_path, "charts/episodic_length") is None


def test_the_report_never_writes_into_a_suite_folder(tmp_path, capsys):
    suite, spec = tmp_path / "suite", write_spec(tmp_path)
    fake_suite(suite)
    before = (suite / "results.json").read_bytes()
    # --spec without --out: the report would land in the suite's folder.
    assert main(["study", "report", str(suite), "--spec", str(spec), "--reps", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give --out" in err, err
    # --out naming the suite itself, or another folder whose results.json the report did not write.
    assert main(["study", "report", str(suite), "--spec", str(spec), "--out", str(suite)]) == 2
    assert "give --out" in capsys.readouterr().err
    write_json(tmp_path / "other" / "results.json", {"phases": {}})
    assert main(["study", "report", str(suite), "--spec", str(spec), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not written by auxrl study report" in err, err
    assert (suite / "results.json").read_bytes() == before and not (suite / "report.md").exists()
    assert not (tmp_path / "other" / "report.md").exists()
    # --spec belongs to report.
    assert main(["study", str(spec), "--spec", str(spec)]) == 2
    assert "--spec is for auxrl study report" in capsys.readouterr().err
    # A folder without runs/.
    assert (
        main(["study", "report", str(tmp_path / "none"), "--spec", str(spec), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "no such folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "folder", "phase"),
    [
        ("atari100k_screen.yaml", "atari100k-cpu-2026-11-30", "screen"),
        ("atari100k.yaml", "atari100k-cpu-2026-11-30", "final"),
        ("atari100k_candidates_screen.yaml", "atari100k-candidates-cpu-2026-12-04", "screen"),
        ("atari100k_candidates.yaml", "atari100k-candidates-cpu-2026-12-04", "final"),
    ],
)
def test_the_shipped_atari_specs_are_the_suites_phases(spec, folder, phase):
    study = load_spec(STUDIES / spec)  # builds every env x variant run config
    plan = json.loads((ROOT / "benchmarks" / "results" / folder / "suite.json").read_text())["plans"][phase]
    # The runs of the suite's phase, its games and variants in its order (the order of the
    # bootstrap's draws, as the suite's analysis took them from its plan).
    assert {(f"ALE/{g}-v5", v, s) for g, v, s in plan} == {(r.env, r.variant, r.seed) for r in study.runs()}
    assert [f"ALE/{g}-v5" for g in dict.fromkeys(g for g, _, _ in plan)] == study.spec.envs
    assert list(dict.fromkeys(v for _, v, _ in plan)) == study.variants
    assert study.spec.steps == 100000 and study.spec.eval_episodes == 10
    assert study.spec.normalize == "hns" and study.baseline in ("no_aux", "no_aux_ram")
    # Override for override as the suite ran them: every key a variant sets has, in the spec's run
    # config, the value in the committed run's config.yaml (aux.tasks: the same tasks enabled).
    for run in study.runs():
        game = run.env.split("/")[1].split("-")[0]
        run_dir = ROOT / "benchmarks" / "results" / folder / "runs" / f"{game}__{run.variant}__{run.seed}"
        committed = yaml.safe_load((run_dir / "config.yaml").read_text())
        resolved = load_config(study.base_path, study.overrides(run)).model_dump()
        for text in study.overrides_of(run.variant):
            key = text.split("=", 1)[0]
            ours, theirs = resolved, committed
            for part in key.split("."):
                ours, theirs = ours[part], theirs[part]
            if key == "aux.tasks":
                ours = sorted(n for n, t in ours.items() if t.get("enabled", True))
                theirs = sorted(n for n, t in theirs.items() if t.get("enabled", True))
            assert ours == theirs, (run, key)


@pytest.mark.slow
def test_the_committed_suite_rereports_its_published_table(tmp_path):
    """benchmarks/results/atari100k-cpu-2026-11-30's final comparison, from its committed eval.json
    files: the same point estimates and (same bootstrap: reps, seed, stratified) the same intervals."""
    published = json.loads((COMMITTED / "results.json").read_text())["phases"]["final"]
    write_report(COMMITTED, reps=SUITE_REPS, plots=False, spec_file=STUDIES / "atari100k.yaml", out=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["finished"] == published["finished"] == 80
    assert [e.split("/")[1].split("-")[0] for e in results["block"]["envs"]] == published["block"]["games"]
    for variant, metrics in published["aggregates"].items():
        for metric, (point, lower, upper) in metrics.items():
            got = results["aggregates"][variant][metric]
            assert got["point"] == point, (variant, metric)
            assert (got["lower"], got["upper"]) == pytest.approx((lower, upper), abs=1e-12), (variant, metric)
    ((variant, (point, lower, upper)),) = published["probability_of_improvement_over_no_aux"].items()
    got = results["probability_of_improvement"][variant]
    assert got["point"] == point and (got["lower"], got["upper"]) == pytest.approx((lower, upper), abs=1e-12)
    hns = {(r["game"], r["variant"], r["seed"]): r["hns"] for r in published["runs"]}
    for run in results["runs"]:
        key = (run["dir"].split("__")[0], run["variant"], run["seed"])
        assert run["normalized"] == pytest.approx(hns[key], abs=1e-15)

"""A study scored by an env's own score (``score: crafter/score``): score.json's ``train_scores``
(the score's value at the run's last logged step, from score_curves), the report's aggregates over
them, and the runs scored without it listed as not finished with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from auxrl.study import analysis
from auxrl.study.report import write_report
from auxrl.study.score import score_curves

ENV = "CrafterReward-v1"
SEEDS = (1, 2, 3)


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def scored_runs(folder: Path) -> dict[tuple[str, int], float]:
    """Committed runs (score.json, no checkpoints): eval returns that favour no_heads, Crafter
    scores that favour inventory; no_heads__3 was scored before train_scores existed."""
    crafter = {}
    for variant, base in (("no_heads", 5.0), ("inventory", 9.0)):
        for seed in SEEDS:
            crafter[(variant, seed)] = base + seed / 10
            data = {"score": 20.0 - base, "std": 1.0, "episodes": 10, "step": 1024}
            if (variant, seed) != ("no_heads", 3):
                data["train_scores"] = {"crafter/score": crafter[(variant, seed)]}
            write_json(folder / "runs" / f"{ENV}__{variant}__{seed}" / "score.json", data)
    return crafter


def write_spec(folder: Path, score: str) -> Path:
    spec = {
        "base": "crafter",
        "envs": [ENV],
        "variants": {"no_heads": {"aux.enabled": False}, "inventory": {"aux.enabled": True}},
        "baseline": "no_heads",
        "seeds": list(SEEDS),
        "steps": 1024,
        "score": score,
    }
    path = folder / f"spec_{score.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_spec_scored_by_crafter_score_reports_the_training_scores(tmp_path):
    source = tmp_path / "study"
    crafter = scored_runs(source)
    out = tmp_path / "report"
    write_report(source, reps=200, plots=False, spec_file=write_spec(tmp_path, "crafter/score"), out=out)
    results = json.loads((out / "results.json").read_text())

    runs = {(r["variant"], r["seed"]): r["score"] for r in results["runs"]}
    assert runs == {key: value for key, value in crafter.items() if key != ("no_heads", 3)}
    assert results["missing"] == [f"{ENV}__no_heads__3"]
    assert results["block"]["seeds"][ENV] == [1, 2]  # matched: the seeds both variants have
    expected = analysis.improvement_estimates(
        {v: np.array([[crafter[(v, s)]] for s in (1, 2)]) for v in ("no_heads", "inventory")},
        "no_heads",
        reps=200,
        seed=0,
    )
    p = results["probability_of_improvement"]["inventory"]
    assert (p["point"], p["lower"], p["upper"]) == expected["inventory"] and p["point"] == 1.0
    # 2 matched runs each: the bootstrap's interval is there, a verdict from it is not.
    assert p["verdict"] == "no verdict (2 matched run(s) per variant; an interval needs 3 or more)"

    report = (out / "report.md").read_text()
    assert "scored by `crafter/score` at its final step" in report
    assert "| `crafter/score` mean ± std over seeds |" in report
    assert f"- {ENV}__no_heads__3: scored, but without `crafter/score` (its train_scores: none)" in report


def test_the_same_runs_scored_by_return_read_score_json_score(tmp_path):
    source = tmp_path / "study"
    scored_runs(source)
    out = tmp_path / "report"
    write_report(source, reps=100, plots=False, spec_file=write_spec(tmp_path, "return"), out=out)
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 6 and results["missing"] == []
    scores = {(r["variant"], r["score"]) for r in results["runs"]}
    assert scores == {("no_heads", 15.0), ("inventory", 11.0)}
    p = results["probability_of_improvement"]["inventory"]
    assert p["point"] == 0.0 and p["verdict"].startswith("worse")  # the other way round; 3 runs each
    assert "scored by the mean return of 10 whole games" in (out / "report.md").read_text()


def test_score_curves_end_at_each_scalars_last_step(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    # Two event files, as a resumed run leaves them: the second starts at the checkpoint's step.
    first = SummaryWriter(str(tmp_path), filename_suffix=".a")
    for step, value in ((100, 1.0), (200, 2.0), (300, 3.0)):
        first.add_scalar("crafter/score", value, step)
    first.close()
    second = SummaryWriter(str(tmp_path), filename_suffix=".b")
    for step, value in ((300, 3.5), (400, 4.5)):
        second.add_scalar("crafter/score", value, step)
    second.close()

    curves = score_curves(tmp_path, ["crafter/score", "minigrid/solved"])
    assert {tag: values[-1] for tag, (_, values) in curves.items()} == {"crafter/score": 4.5}
    assert score_curves(tmp_path / "nothing", ["crafter/score"]) == {}


def test_read_scalar_tags_reads_the_asked_tags_or_all(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from auxrl.plot import read_scalar_tags

    writer = SummaryWriter(str(tmp_path))
    for step in (10, 20, 30):
        writer.add_scalar("charts/episodic_return", step / 10, step)
        writer.add_scalar("crafter/score", step / 100, step)
    writer.close()

    asked = read_scalar_tags(tmp_path, ["crafter/score", "aux/none", "crafter/score"])
    assert list(asked) == ["crafter/score"]  # once, in order; a tag never logged left out
    steps, values = asked["crafter/score"]
    assert steps.tolist() == [10, 20, 30] and np.allclose(values, [0.1, 0.2, 0.3])
    assert sorted(read_scalar_tags(tmp_path)) == ["charts/episodic_return", "crafter/score"]
    by_prefix = read_scalar_tags(tmp_path, ["charts/episodic_return"], prefix="crafter/")
    assert list(by_prefix) == ["charts/episodic_return", "crafter/score"]
    assert list(read_scalar_tags(tmp_path, prefix="charts/")) == ["charts/episodic_return"]

"""What a study's run directory holds, and so what it needs next.

A run is ``done`` when its ``score.json`` names a step at or past the study's ``steps`` and its
latest checkpoint (if any is left) is that step: committed results without checkpoints still
count, and a checkpoint trained past its score is scored again. Everything else is decided from
the checkpoints ``auxrl train`` wrote, so a study killed at any moment continues where each run
stopped. The report also reads ``eval.json``, the score file of the retired ``benchmarks/atari100k.py``'s
runs (the same keys), where a run has no ``score.json``: those suites re-report as studies.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

SCORE_FILE = "score.json"
# the retired benchmarks/atari100k.py's score of a run (score, std, episodes, step: as score.json); read by
# the report only, so committed suites re-report (the runner trains and scores into score.json).
SUITE_SCORE_FILE = "eval.json"
REPORT_SCORE_FILES = (SCORE_FILE, SUITE_SCORE_FILE)
CURVE_FILE = "curve.json"  # the run's learning curve, compact: committed instead of the event files
# "probe": scored, but its probe (a study's probe_frames) is missing or of another checkpoint.
Status = Literal["done", "probe", "score", "resume", "restart", "fresh"]
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def checkpoint_step(run_dir: Path) -> int | None:
    """Step of the run's latest checkpoint, from its file name (None: no checkpoint)."""
    from auxrl import checkpoint

    try:
        match = _STEP_FILE.search(checkpoint.find(run_dir).name)
    except FileNotFoundError:
        return None
    return int(match.group(1)) if match else None


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path`` (None when absent, unreadable or not an object)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_score(run_dir: Path, files: Sequence[str] = (SCORE_FILE,)) -> dict[str, Any] | None:
    """The run's ``score.json`` (None when absent, unreadable or without a score); with ``files``,
    the first of those files that holds a score (the report: :data:`REPORT_SCORE_FILES`)."""
    for name in files:
        data = read_json(run_dir / name)
        if data is not None and isinstance(data.get("score"), (int, float)):
            return data
    return None


def run_status(run_dir: Path, steps: int, score_files: Sequence[str] = (SCORE_FILE,)) -> Status:
    """What the run in ``run_dir`` needs next to be trained to ``steps`` and scored.

    ``done``: scored at its final step; ``score``: trained, not scored (or trained on since);
    ``resume``: a checkpoint short of ``steps`` (``auxrl train --resume``); ``restart``: a
    directory without a checkpoint (died before its first one: ``auxrl train`` there starts it
    over); ``fresh``: no directory yet. ``score_files``: where the score is read (see read_score).
    """
    step = checkpoint_step(run_dir)
    scored = read_score(run_dir, score_files) or {}
    scored_step = scored.get("step", -1)
    if scored_step >= steps and (step is None or step == scored_step):
        return "done"
    if step is None:
        return "restart" if run_dir.exists() else "fresh"
    return "resume" if step < steps else "score"


def probe_due(run_dir: Path) -> bool:
    """No ``probe.json`` of the checkpoint the run's score is of (auxrl probe writes its step)."""
    scored = (read_score(run_dir) or {}).get("step")
    probed = (read_json(run_dir / "probe.json") or {}).get("global_step")
    return probed is None or probed != scored


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename): a kill never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)

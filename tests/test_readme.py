"""The README's "Write your own auxiliary task" example works as written."""

import re
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from auxrl.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert "pip install -e . && auxrl train cartpole" in first_block
    assert 'pip install -e ".[dev]" && python -m pytest -q' in first_block


@pytest.mark.slow
def test_readme_custom_task_example_trains(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"```python\n(# my_tasks\.py\n.*?)```", text, re.S).group(1)
    (tmp_path / "my_tasks.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_tasks", None)
    run = tmp_path / "run"
    code = main(
        [
            "train",
            "breakout",
            "aux.tasks.inverse_dynamics.type=my_tasks:InverseDynamics",
            "ppo.total_steps=512",
            "env.num_envs=4",
            "aux.batch_size=4",
            "aux.diagnostics_every=1",
            "--run-dir",
            str(run),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for key in ("loss", "accuracy", "weight", "grad_cosine", "grad_norm_ratio"):
        assert f"aux/inverse_dynamics/{key}" in tags
    # No weight in the config: the task's documented default_weight applies.
    weights = {round(e.value, 6) for e in acc.Scalars("aux/inverse_dynamics/weight")}
    assert weights == {0.1}


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    code = re.search(r"```python\n(# api_example\.py\n.*?)```", text, re.S).group(1)
    assert '"ppo.total_steps": 50_000' in code
    monkeypatch.chdir(tmp_path)  # the example writes runs/api
    exec(compile(code.replace("50_000", "2_048"), "api_example.py", "exec"), {})  # shorter, same code
    out = capsys.readouterr().out
    assert "trained 2,048 steps" in out and "one game:" in out
    assert (tmp_path / "runs" / "api" / "config.yaml").is_file()

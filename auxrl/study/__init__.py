"""Studies: "did my head help?" as one command (``auxrl study SPEC``, ``auxrl study report DIR``).

- ``spec.py``: the YAML spec (base config, envs, variants, seeds, steps) and its checks;
- ``state.py``: what a run directory holds, so what it needs next (resumable studies);
- ``seam.py``: the types between the runner and the backends (Work, Outcome, Backend);
- ``backends.py``: where runs execute (the seam's contract, local processes, the registry);
- ``cluster.py``: the ray and slurm backends (imported only when chosen);
- ``launch.py``: how a cluster worker starts a run's command (signals, parent-death signal);
- ``runner.py``: the matrix of runs, the output folder's lock and record, progress;
- ``score.py``: one run's evaluation into ``score.json`` (a child process);
- ``scores.py``: reference scores (Atari human / random) and normalisation;
- ``analysis.py``: rliable aggregates, P(improvement), learning-curve bands;
- ``report.py``: report.md, results.json and the plots.

Nothing is imported here, so ``auxrl --help`` stays fast.
"""

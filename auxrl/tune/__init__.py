"""Tuning: ``auxrl tune SPEC`` searches auxiliary weights and PPO settings with Optuna.

- ``spec.py``: the YAML spec (base config, budget, search space, sampler, pruner) and its checks;
- ``runner.py``: the trials (``auxrl train`` runs, their checkpoints evaluated as they appear,
  pruning), the Optuna study in its storage, the trials table and the best config.

Nothing is imported here, so ``auxrl --help`` stays fast (Optuna is an extra: ``pip install
"auxrl[tune]"``).
"""

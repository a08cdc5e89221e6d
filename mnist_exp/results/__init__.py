"""Results: what a user does with finished sweeps.

Owns leaderboards read from the store (``compare``), promotion of a sweep's best model to the registry alias
under a lock and a guard (``promote``), ensembles of a sweep's trials chosen on validation and built as one
model (``ensemble_select``, ``ensemble``), hyperparameter importance (``importance``) and the Markdown descriptions
of sweeps and model versions (``describe``). Imports ``model``, ``tracking``, ``spec`` and ``runtime``.
"""

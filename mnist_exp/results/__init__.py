"""Results: what a user does with finished sweeps.

Owns leaderboards read from the store (``compare``), promotion of a sweep's best model to the registry alias
under a lock and a guard (``promote``), hyperparameter importance (``importance``) and the Markdown descriptions
of sweeps and model versions (``describe``). Imports ``model``, ``tracking``, ``spec`` and ``runtime``.
"""

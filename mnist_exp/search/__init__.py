"""Search: a sweep, from its parent run to its last trial and refit, exactly once whatever fails.

Owns the sweep (``sweep``: parent run, resume, finish), its state file (``sweep_state``), Keras Tuner's oracles
with atomic state, the budget and pruning (``oracle``, ``budget``, ``pruners``), TPE behind Keras Tuner's
Oracle (``tpe_oracle``), the tuner whose trials are tracked runs
(``tracked_tuner``, ``trial_failures``, ``trial_progress``), the refit (``refit``) and, in ``distributed``, the
chief and its workers. Imports ``results``, ``model``, ``tracking``, ``spec`` and ``runtime``; inside, the
sweep sits over ``distributed``, which sits over the tuner glue (import-linter's ``search`` contract).
"""

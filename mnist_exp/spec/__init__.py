"""Spec: what a user writes, validated as data before anything heavy loads.

Owns experiment files (``experiment``: frozen dataclasses, unknown keys rejected by name), search spaces
(``space``), every lever of the model (``levers``: the one table a new hyperparameter is added to), the one
name rule (``names``), upper bounds (``limits``), durations and strict YAML reading. Imports ``runtime`` only;
never TensorFlow, Keras Tuner or MLflow at import (import-linter's ``light`` contract).
"""

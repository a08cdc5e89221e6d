"""Model: the CNN and everything that trains, evaluates or applies one model.

Owns the CNN built from the levers (``cnn``), data sources and splits (``data``), how long a trial trains
(``fidelity``), training shared by every run (``training``), figures (``plots``), one tracked training run
(``tracked_run``: ``mnist-exp train`` and the refit), classifying images (``predict``) and the ensemble's
MLflow model (``ensemble_pyfunc``: copied into each ensemble, imports only MLflow, Keras and NumPy). Imports
``tracking``, ``spec`` and ``runtime``.
"""

"""Distributed: one sweep's trials on many processes and machines.

Owns the chief (``oracle_chief``: Keras Tuner's oracle served over gRPC, a token, trial leases), the oracle's
side of those leases (``trial_leases``), what chief and workers say beside Keras Tuner's protocol (``wire``),
the worker (``worker``: joining; ``worker_tuner``: its Keras Tuner side; ``worker_lease``: renewal and the chief
watched, from threads) and the chief's local worker processes (``worker_processes``). A "lease" is a worker's
hold on one trial, renewed while it lives. Imports the tuner glue of ``search`` and the layers below.
"""

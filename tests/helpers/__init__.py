"""Helpers the tests import by name (``from helpers import cli, runs``); fixtures stay in conftest.py.

``commands``: the CLI in a subprocess or in this process, and small experiment files; ``stores``: reading a test's MLflow store;
``servers``: ports, addresses that answer, output of started processes, outages; ``hosts``: machines of their own
(network namespaces), for the multi-machine tests; ``oracles``: a real oracle driven as a tuner would.
"""

from helpers.commands import (ROOT, SWEEP_HOLDER, SWEEP_YAML, TINY, TINY_SWEEP, VENV_BIN, cli, cli_here, pruned_sweep,
                              write_yaml)
from helpers.servers import Outage, Output, free_port, job_runner_processes, served_predictions, wait_http
from helpers.stores import runs, wait_for_store

__all__ = ["ROOT", "SWEEP_HOLDER", "SWEEP_YAML", "TINY", "TINY_SWEEP", "VENV_BIN", "Outage", "Output", "cli", "cli_here",
           "free_port", "job_runner_processes", "pruned_sweep", "runs", "served_predictions", "wait_for_store", "wait_http",
           "write_yaml"]

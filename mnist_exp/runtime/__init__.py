"""Runtime: what every command shares with the process it runs in.

Owns the error hierarchy and its exit codes (``errors``), signals taken at safe points (``signals``), named
fault points for the reliability tests (``faults``), the terminal's lines and durations (``terminal``),
port checks (``ports``) and the garbage collector's reach (``heap``). The bottom layer: imports nothing else
of mnist_exp, and no TensorFlow or MLflow.
"""

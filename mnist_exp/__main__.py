"""``python -m mnist_exp``: the mnist-exp command (local workers are started this way, with this interpreter)."""

import sys

from .cli import main

sys.exit(main())

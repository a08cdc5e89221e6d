"""``python -m mnist_exp``: the mnist-exp command (local workers are started this way, with this interpreter)."""

import sys

from mnist_exp.cli import main

sys.exit(main())

"""``python -m mnist_exp.cli``: the mnist-exp command."""

import sys

from mnist_exp.cli import main

sys.exit(main())

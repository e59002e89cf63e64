"""``python -m multitask_deeplab`` runs the ``mtdl`` command line."""

import sys

from multitask_deeplab.cli import main

sys.exit(main())

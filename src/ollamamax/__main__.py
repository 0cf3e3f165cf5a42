"""``python -m ollamamax``: the same command as ``ollamamax`` (see ``cli.py``); nothing else."""

import sys

from .cli import main

sys.exit(main())

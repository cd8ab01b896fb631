"""``python -m pyro_vae``: the same command line as ``pyro-vae``."""

import sys

from .cli import main

sys.exit(main())

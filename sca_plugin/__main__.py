"""``python -m sca_plugin`` = the ``sca-prune`` command."""
import sys

from .cli import main

sys.exit(main())

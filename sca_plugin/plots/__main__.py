"""``python -m sca_plugin.plots``: an alias of ``sca-prune report``."""
import sys

from .report import main

sys.exit(main())

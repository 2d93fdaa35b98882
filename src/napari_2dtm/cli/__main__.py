"""``python -m napari_2dtm.cli ...``: the ``napari-2dtm`` command without its script
(``scripts/demo.sh`` uses it, so the demo runs from a checkout whatever the PATH)."""

import sys

from .main import main

sys.exit(main())

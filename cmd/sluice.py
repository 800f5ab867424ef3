#!/usr/bin/env python3
"""Thin entry point: ``python cmd/sluice.py ARGS`` == the installed ``sluice ARGS``.

No logic lives here; the command line is :mod:`ingest.cli` and the composition root is
:mod:`ingest.app`. (``cmd/`` is deliberately not a package: ``cmd`` is a standard-library
module name.)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())

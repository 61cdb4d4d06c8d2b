"""Regenerate the paper's tables and figures from tracked runs (`--help` for the options)."""

import sys

from mae.report.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Run a study: `python studies/run.py mask_ratio_sweep [--scale tiny] [--dry-run]`.

Thin entry point: everything lives in `mae.sweep.cli` (also installed as `mae-study`).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # works without installing

from mae.sweep.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())

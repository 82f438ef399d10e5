"""Standalone entry point: `python main.py [--config ...] [--port ...]`.

Also `python main.py proxy ...` and `python main.py operator ...` (see --help).
"""

import sys

from orchestrator.cli import main

if __name__ == "__main__":
    sys.exit(main())

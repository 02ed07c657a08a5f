"""`python -m bucket_scheduler.replay`: the scheduling core's trace replay (core/replay.py)."""

import sys

from bucket_scheduler.core.replay import main

if __name__ == "__main__":
    sys.exit(main())

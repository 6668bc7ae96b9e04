"""``python -m benchmarks STUDY [--config FILE] [--out FILE] [--work DIR] [--set key.path=value ...]``."""

import sys

from benchmarks.harness import main

sys.exit(main())

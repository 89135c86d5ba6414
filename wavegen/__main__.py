"""`python -m wavegen ...` (also what `torchrun -m wavegen train ...` runs)."""

import sys

from wavegen.cli import main

sys.exit(main())

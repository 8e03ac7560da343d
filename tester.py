#!/usr/bin/env python3
"""Run a model over images and write COCO results (and metrics), or run .bin inputs through a model.

The code lives in ``centermask2/cli/tester.py``; ``python tester.py --help`` lists the options.
"""

import sys

try:
    from centermask2.cli.tester import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

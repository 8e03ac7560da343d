#!/usr/bin/env python3
"""Run a model over images and write COCO results (and metrics), or run .bin inputs through a model.

The code lives in ``centermask2/cli/tester.py``; ``python tester.py --help`` lists the options.
"""

import sys

from centermask2.cli.tester import main

if __name__ == "__main__":
    sys.exit(main())

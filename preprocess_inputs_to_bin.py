#!/usr/bin/env python3
"""Preprocess images into .bin network inputs for an offline engine (stage 1 of 3).

The code lives in ``centermask2/cli/preprocess.py``; ``python preprocess_inputs_to_bin.py --help`` lists the options.
"""

import sys

try:
    from centermask2.cli.preprocess import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

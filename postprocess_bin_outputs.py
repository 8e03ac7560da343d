#!/usr/bin/env python3
"""Turn raw output .bin files into COCO results and metrics (stage 3 of 3), or evaluate a results file.

The code lives in ``centermask2/cli/postprocess.py``; ``python postprocess_bin_outputs.py --help`` lists the options.
"""

import sys

try:
    from centermask2.cli.postprocess import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

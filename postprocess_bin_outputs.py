#!/usr/bin/env python3
"""Turn raw output .bin files into COCO results and metrics (stage 3 of 3), or evaluate a results file.

The code lives in ``centermask2/cli/postprocess.py``; ``python postprocess_bin_outputs.py --help`` lists the options.
"""

import sys

from centermask2.cli.postprocess import main

if __name__ == "__main__":
    sys.exit(main())

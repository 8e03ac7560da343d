#!/usr/bin/env python3
"""Draw CenterMask2 detections (masks, boxes, class names, scores) on images.

The code lives in ``centermask2/cli/visualizer.py``; ``python visualizer.py --help`` lists the options.
"""

import sys

from centermask2.cli.visualizer import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Draw CenterMask2 detections (masks, boxes, class names, scores) on images.

The code lives in ``centermask2/cli/visualizer.py``; ``python visualizer.py --help`` lists the options.
"""

import sys

try:
    from centermask2.cli.visualizer import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

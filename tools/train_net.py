#!/usr/bin/env python3
"""Train or fine-tune CenterMask2 on COCO-format data (upstream's losses and solver, no detectron2).

The code lives in ``centermask2/cli/train.py``; ``python tools/train_net.py --help`` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from centermask2.cli.train import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

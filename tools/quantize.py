#!/usr/bin/env python3
"""Post-training int8 quantization of an exported CenterMask2 model, calibrated on your images.

The code lives in ``centermask2/cli/quantize.py``; ``python tools/quantize.py --help`` lists the options.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    from centermask2.cli.quantize import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Export a CenterMask2 checkpoint to one ONNX graph of standard operators.

The code lives in ``centermask2/cli/export_onnx.py``; ``python convert_model_into_onnx.py --help`` lists the options.
"""

import sys

try:
    from centermask2.cli.export_onnx import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: the same exit (130) as later on, no traceback
    sys.stderr.write("\ninterrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Export a CenterMask2 checkpoint to one ONNX graph of standard operators.

The code lives in ``centermask2/cli/export_onnx.py``; ``python convert_model_into_onnx.py --help`` lists the options.
"""

import sys

from centermask2.cli.export_onnx import main

if __name__ == "__main__":
    sys.exit(main())

"""CenterMask2 deployment toolkit: the model in plain PyTorch plus the stages around it.

Where things live: ``modeling`` (the network and its ops), ``config``, ``checkpoint``,
``data`` (images in), ``engine`` (backends and the image -> results loop), ``export`` (ONNX),
``offline`` (the ``.bin`` pipeline), ``evaluation`` (COCO metrics, detection matching),
``visualization``, ``cli`` (the five scripts); ``contract`` (the model's inputs, outputs and
metadata), ``errors``, ``fileio`` and ``summary`` are shared by all of them.
"""

__version__ = "0.1.0"

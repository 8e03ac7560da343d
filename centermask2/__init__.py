"""CenterMask2 deployment toolkit: the model in plain PyTorch plus the stages around it.

Where things live: ``modeling`` (the network, its layers and ops, post-processing; depends on
nothing above it), ``config``, ``checkpoint``, ``data`` (images, classes, datasets in),
``engine`` (``open_model`` for every runtime, the executors a stage's jobs run on, the image ->
results stage), ``export`` (ONNX, int8), ``offline`` (the ``.bin`` pipeline), ``evaluation``
(COCO, panoptic and semantic metrics, detection matching), ``visualization``, ``cli`` (the
scripts); ``contract`` (the model's inputs, outputs and metadata), ``errors``, ``fileio``,
``summary``, ``cpu`` and ``benchmark`` (the benchmarks' harness) are shared by all of them.
"""

__version__ = "0.1.0"

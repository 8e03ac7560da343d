"""Running a model: opening it, and where a stage's work runs.

* :mod:`.sources`: :func:`open_model`, the one factory for PyTorch (a config and its checkpoint),
  ONNX Runtime and OpenVINO (an exported ``.onnx``), giving a :class:`ModelSource` (a backend plus
  how to feed it) and its picklable :class:`SourceRecipe`;
* :mod:`.backend`: the :class:`~.backend.Backend` protocol (``run(inputs) -> outputs``, path,
  metadata, static batch, input dtype) and :class:`~.backend.OnnxFileBackend`, the base of
  :mod:`.onnxruntime_backend` and :mod:`.openvino_backend`; PyTorch in :mod:`.torch_backend`;
* :mod:`.executors`: a stage's :class:`~.executors.Job` and where it runs: in this process, a
  process pool, or a Ray cluster (:mod:`.ray_executor`);
* :mod:`.loop`: the image -> COCO results stage and its resume state (:mod:`.resume`);
* :mod:`.trainer`: the training loop and solver.

Importing this package imports neither torch nor any runtime: they load when a model is opened.
"""

from .executors import Executor, Job, LocalExecutor, PoolExecutor
from .sources import RUNTIMES, ModelSource, SourceRecipe, open_model

__all__ = ["open_model", "RUNTIMES", "ModelSource", "SourceRecipe", "Executor", "Job", "LocalExecutor", "PoolExecutor"]

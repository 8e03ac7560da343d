"""Running a model: backends behind one protocol (:mod:`.backend`; PyTorch in
:mod:`.torch_backend`, ONNX Runtime in :mod:`.onnxruntime_backend`), model sources
(:mod:`.sources`), the image -> COCO results loop (:mod:`.loop`) and its resume state
(:mod:`.resume`).

Submodules are imported on use: ``centermask2.engine.onnxruntime_backend`` does not import torch.
"""

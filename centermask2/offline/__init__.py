"""The offline ``.bin`` pipeline, in the order its stages run: the file layout they share
(:mod:`.layout`), images -> input bins (:mod:`.preprocess`), input bins -> model -> output bins
(:mod:`.run`), output bins -> COCO results and, for panoptic models, panoptic results
(:mod:`.postprocess`). Stages 1 and 2 are a plan, a job and a reduction: any executor of
:mod:`centermask2.engine.executors` runs their jobs (this process, a process pool, Ray).

Any engine that reads and writes the same bytes (ais_bench on an Ascend OM, a TensorRT runner)
can replace stage 2. Submodules are imported on use.
"""

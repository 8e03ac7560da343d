"""The offline ``.bin`` pipeline, in the order its stages run: the file layout they share
(:mod:`.layout`), images -> input bins (:mod:`.preprocess`), input bins -> model -> output bins
(:mod:`.run`), output bins -> COCO results (:mod:`.postprocess`).

Any engine that reads and writes the same bytes (ais_bench on an Ascend OM, a TensorRT runner)
can replace stage 2. Submodules are imported on use.
"""

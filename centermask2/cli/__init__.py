"""The command-line stages, one module each, plus what they share (:mod:`.common`).

=============================  ===================================  ==========================
root script (what users run)   module                               console script
=============================  ===================================  ==========================
``convert_model_into_onnx.py`` :mod:`centermask2.cli.export_onnx`   ``centermask2-export-onnx``
``preprocess_inputs_to_bin.py`` :mod:`centermask2.cli.preprocess`   ``centermask2-preprocess``
``tester.py``                  :mod:`centermask2.cli.tester`        ``centermask2-tester``
``postprocess_bin_outputs.py`` :mod:`centermask2.cli.postprocess`   ``centermask2-postprocess``
``visualizer.py``              :mod:`centermask2.cli.visualizer`    ``centermask2-visualize``
=============================  ===================================  ==========================

Each module has ``build_parser()`` and ``main(argv=None) -> exit code``.
"""

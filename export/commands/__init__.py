"""One module per ``python -m export`` command; ``export/__main__.py`` only parses and dispatches.

Each module's ``run(args)`` takes the parsed ``argparse.Namespace`` and returns the exit status
(0 done, 1 failed, 2 bad usage); an ``ExportError`` it raises is reported by ``__main__`` (status 1).

- ``onnx``: ``export_model`` (text encoder -> ONNX, parity, int8 and its quality gate, register);
- ``vllm``: ``import_vllm`` (a checkpoint as it is, for the vLLM runner);
- ``colqwen2``: ``export_colqwen2`` (vision-encoder and language-model graphs);
- ``calibrate``: static int8 on a text set, TensorRT INT8 calibration tables;
- ``ensure``: import what a registry profile serves and the store lacks, check what it has;
- ``pin``: pin models by content in the registry's lock;
- ``listing``: the ``list`` command (the store's entries, pins and served names).
"""

"""The ONNX Runtime engine (``engine.py``), its provider choice (``providers.py``) and its
BentoML runner service (``service.py``)."""

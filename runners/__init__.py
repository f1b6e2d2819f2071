"""Runner services, one per engine, behind the gateway.

``engine.py`` is the contract every engine meets; ``ort/`` is the ONNX Runtime engine and its
BentoML service. A runner receives already-tokenized, already-validated inputs (the gateway does
that before batching) and returns one result per input, in input order.
"""

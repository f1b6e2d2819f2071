"""Runner services, one per engine, behind the gateway.

Calls arrive in the wire format of ``core/wire.py``; ``engine.py`` is the interface the ONNX
Runtime engines meet; ``ort/`` is the ONNX Runtime engine and its BentoML service, ``vllm/`` the
vLLM one. A runner receives already-tokenized, already-validated inputs (the gateway does that
before batching) and returns one result per input, in input order.
"""

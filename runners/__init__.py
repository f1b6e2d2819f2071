"""Runner services, one per engine, behind the gateway.

Calls arrive in the wire format of ``core/wire.py``; ``ort/`` is the ONNX Runtime engine (and the
interface its engines meet, ``ort/engine.py: EmbeddingEngine``) and its BentoML service, ``vllm/``
the vLLM one. A runner receives already-tokenized, already-validated inputs (the gateway does that
before batching) and returns one result per input, in input order.
"""

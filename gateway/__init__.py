"""The HTTP-facing half of the platform: the OpenAI-compatible API served by ``service.py``.

One module per concern: ``protocol`` (request/response models), ``auth``, ``admission`` (bounded
in-flight work -> 429), ``preprocess`` (tokenization and input validation before batching),
``runner_client`` (calls to the runner services), ``serving`` (the embeddings pipeline),
``metrics``, ``openapi`` and ``app`` (routes). The errors it raises and the wire format of its
calls to the runners are ``core``'s (``core/errors.py``, ``core/wire.py``).
"""

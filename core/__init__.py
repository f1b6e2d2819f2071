"""The contract room: what the gateway, the runners and the hosting layer agree on.

``core`` sits below every other room and imports nothing from the project: the wire format of
the gateway->runner hop (``core.wire``), the OpenAI-shaped error table (``core.errors``), the page
geometry of vision models that the gateway, the runners and the export share (``core.pages``) and
the one typed settings object read from ``EMBED_*`` variables (``core.settings``).
"""

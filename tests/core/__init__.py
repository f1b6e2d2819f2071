"""``core/``: the wire format and the settings."""

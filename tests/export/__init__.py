"""``export/``: the CLI, ColQwen2 and int8 exports, pins, the hub path."""

"""``models/``: the registry, its checks, the topology, the memory plan, the store."""

"""``hosting/``: the server home, faults and the drain on real servers."""

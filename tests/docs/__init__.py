"""``docs/`` and the README: pictures, tables, rooms, and the examples that run."""

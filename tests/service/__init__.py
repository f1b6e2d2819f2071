"""``service.py``: the composed service on real servers (the OpenAI client, load, layouts, metrics)."""

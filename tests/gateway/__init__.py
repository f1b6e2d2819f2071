"""``gateway/``: parsing, routing, the runner client, images and hostile input."""

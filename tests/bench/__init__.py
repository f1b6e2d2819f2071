"""``bench/``: the harness's short runs and k6."""

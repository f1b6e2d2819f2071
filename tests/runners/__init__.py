"""``runners/``: the runners' checks, providers, GPU start checks, batching, vLLM."""

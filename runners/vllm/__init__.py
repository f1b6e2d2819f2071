"""The vLLM runner: vLLM's pooling engine (``AsyncLLM``, in-process) for ``engine: vllm`` models."""

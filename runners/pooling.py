"""Pooling of token states into embeddings, in NumPy.

All functions take ``hidden`` float32 (batch, seq, dim) and ``mask`` int64 (batch, seq) with 1 on
real tokens and 0 on padding, and return float32 arrays.
"""

from __future__ import annotations

import numpy as np

from models.schema import Pooling


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: Pooling) -> np.ndarray:
    """(batch, seq, dim) -> (batch, dim) for mean/cls/last pooling.

    ``last`` takes the last real token of each row found from the mask, so it is correct for
    both left and right padding.
    """
    if pooling is Pooling.MEAN:
        weights = mask[..., None].astype(hidden.dtype)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if pooling is Pooling.CLS:
        return hidden[:, 0]
    if pooling is Pooling.LAST:
        seq = mask.shape[1]
        last = seq - 1 - np.argmax(mask[:, ::-1], axis=1)
        return hidden[np.arange(hidden.shape[0]), last]
    raise ValueError(f"pool() does not reduce {pooling.value!r} outputs")


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis; zero vectors stay zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)

"""Input preparation before batching: tokenization, instructions, truncation and id checks.

This runs in the gateway, per request, before anything reaches a runner: every input is turned
into int64 token ids ``(tokens,)`` that are inside the model's vocabulary and at most
``max_tokens`` long, or the request fails with a 400 that names the input. So a batch in a runner
only ever holds valid inputs, and ``usage`` counts the tokens the engine really sees.

Text is tokenized with the model's fast tokenizer (``tokenizer.json`` from its store entry)
without padding (the runner pads per sub-batch) and with special tokens. Token-id inputs are used
as given (no special tokens added), as OpenAI and vLLM do.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from gateway.errors import InvalidRequest
from models.registry import ModelSpec
from models.store import StoreEntry


class TextPreprocessor:
    """Turns one model's request inputs into validated token ids."""

    def __init__(self, spec: ModelSpec, entry: StoreEntry) -> None:
        self.spec = spec
        tokenizer = Tokenizer.from_file(str(entry.file("tokenizer.json")))
        tokenizer.no_padding()  # the packaged MiniLM tokenizer pads every text to 128 otherwise
        tokenizer.no_truncation()
        self._full = tokenizer
        self._truncating = Tokenizer.from_str(tokenizer.to_str())
        self._truncating.enable_truncation(max_length=spec.max_tokens)
        self.vocab_size = int(entry.settings.get("vocab_size") or tokenizer.get_vocab_size(True))

    def instruction(self, input_type: str | None) -> str:
        if input_type is None:
            return ""
        return getattr(self.spec.instructions, input_type)

    def texts(self, texts: Sequence[str], input_type: str | None, truncate: bool) -> list[np.ndarray]:
        """Token ids per text; 400 on an empty text, or an over-long one when not truncating."""
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"input[{i}] is an empty string; every input must have text.", param="input")
        if prefix := self.instruction(input_type):
            texts = [prefix + text for text in texts]
        tokenizer = self._truncating if truncate else self._full
        encodings = tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [tokenizer.encode(texts[0])]
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        if not truncate:
            self._check_lengths(ids)
        return ids

    def token_ids(self, lists: Sequence[Sequence[int]], input_type: str | None, truncate: bool) -> list[np.ndarray]:
        """Validated copies of token-id inputs; 400 on empty lists or ids outside the vocabulary."""
        if self.instruction(input_type):
            raise InvalidRequest(
                f"input_type={input_type!r} prepends an instruction to text; send text, not token ids.",
                param="input_type",
            )
        ids = []
        for i, values in enumerate(lists):
            if not values:
                raise InvalidRequest(f"input[{i}] is an empty token list.", param="input")
            array = np.asarray(values, dtype=np.int64)
            if int(array.max()) >= self.vocab_size:
                raise InvalidRequest(
                    f"input[{i}] holds token id {int(array.max())}, outside {self.spec.name}'s "
                    f"vocabulary of {self.vocab_size} (ids from another tokenizer, such as tiktoken's, "
                    "are not accepted; send text instead).",
                    param="input",
                )
            ids.append(array)
        if truncate:
            return [array[: self.spec.max_tokens] for array in ids]
        self._check_lengths(ids)
        return ids

    def _check_lengths(self, ids: list[np.ndarray]) -> None:
        for i, array in enumerate(ids):
            if len(array) > self.spec.max_tokens:
                raise InvalidRequest(
                    f"input[{i}] is {len(array)} tokens long; {self.spec.name} takes at most "
                    f"{self.spec.max_tokens} tokens. Shorten it or set truncate=true.",
                    param="input",
                    code="context_length_exceeded",
                )

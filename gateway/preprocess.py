"""Input preparation before batching: tokenization, instructions, truncation and id checks.

This runs in the gateway, per request, before anything reaches a runner: every input is turned
into int64 token ids ``(tokens,)`` that are inside the model's vocabulary and at most
``max_tokens`` long, or the request fails with a 400 that names the input. So a batch in a runner
only ever holds valid inputs, and ``usage`` counts the tokens the engine really sees.

Text is tokenized with the model's fast tokenizer (``tokenizer.json`` from its store entry)
without padding (the runner pads per sub-batch) and with special tokens.

Token-id inputs must be what the model's own tokenizer makes: ids inside its vocabulary, framed
by the special tokens it adds (``[CLS] ... [SEP]`` for BERT; nothing for a tokenizer that adds
none), unless the registry entry sets ``token_ids_need_special_tokens: false``. That frame is
how ids from another tokenizer are caught: LangChain's ``OpenAIEmbeddings`` sends tiktoken ids by
default, and most of them lie inside a 30k BERT vocabulary, so a range check alone would embed
them as garbage. A token-id input cut at ``max_tokens`` keeps its closing special tokens, as
truncated text does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from gateway.errors import InvalidRequest
from models.registry import ModelSpec
from models.store import StoreEntry

OTHER_TOKENIZER_HINT = (
    "Token ids must come from this model's own tokenizer (LangChain's OpenAIEmbeddings sends "
    "tiktoken ids unless check_embedding_ctx_length=False); or send text."
)


def special_token_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text's own ids, e.g. ([101], [102])."""
    inner = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    start = next(i for i in range(len(full) - len(inner) + 1) if full[i : i + len(inner)] == inner)
    return full[:start], full[start + len(inner) :]


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
        self.prefix, self.suffix = special_token_frame(tokenizer)

    def instruction(self, input_type: str | None, override: str | None = None) -> str:
        """The text prepended to each input: the request's ``instruction`` when given (even
        ``""``), else the registry's instruction for ``input_type``, else none."""
        if override is not None:
            return override
        if input_type is None:
            return ""
        return getattr(self.spec.instructions, input_type)

    def texts(
        self, texts: Sequence[str], input_type: str | None, truncate: bool, override: str | None = None
    ) -> list[np.ndarray]:
        """Token ids per text; 400 on an empty text, or an over-long one when not truncating.
        ``override``: the request's ``instruction`` (see ``instruction``)."""
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"input[{i}] is an empty string; every input must have text.", param="input")
        if prefix := self.instruction(input_type, override):
            texts = [prefix + text for text in texts]
        tokenizer = self._truncating if truncate else self._full
        encodings = tokenizer.encode_batch(list(texts)) if len(texts) > 1 else [tokenizer.encode(texts[0])]
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        if not truncate:
            self._check_lengths(ids)
        return ids

    def token_ids(
        self, lists: Sequence[Sequence[int]], input_type: str | None, truncate: bool, override: str | None = None
    ) -> list[np.ndarray]:
        """Validated copies of token-id inputs; 400 on empty lists or ids outside the vocabulary,
        or when an instruction would have to be prepended (it applies to text only)."""
        if self.instruction(input_type, override):
            param = "instruction" if override else "input_type"
            raise InvalidRequest(
                f"{param} prepends an instruction to text; send text, not token ids.", param=param
            )
        ids = []
        for i, values in enumerate(lists):
            if not values:
                raise InvalidRequest(f"input[{i}] is an empty token list.", param="input")
            array = np.asarray(values, dtype=np.int64)
            if int(array.max()) >= self.vocab_size:
                raise InvalidRequest(
                    f"input[{i}] holds token id {int(array.max())}, outside {self.spec.name}'s "
                    f"vocabulary of {self.vocab_size}. {OTHER_TOKENIZER_HINT}",
                    param="input",
                )
            if self.spec.token_ids_need_special_tokens and not self._framed(values):
                raise InvalidRequest(
                    f"input[{i}] does not start with {self.prefix} and end with {self.suffix}, the special "
                    f"tokens {self.spec.name}'s tokenizer adds. {OTHER_TOKENIZER_HINT}",
                    param="input",
                )
            ids.append(array)
        if truncate:
            return [self._cut(array) for array in ids]
        self._check_lengths(ids)
        return ids

    def _framed(self, values: Sequence[int]) -> bool:
        head, tail = len(self.prefix), len(self.suffix)
        return (
            len(values) >= head + tail
            and list(values[:head]) == self.prefix
            and (not tail or list(values[-tail:]) == self.suffix)
        )

    def _cut(self, array: np.ndarray) -> np.ndarray:
        """At most ``max_tokens`` ids; a framed input keeps its closing special tokens."""
        limit = self.spec.max_tokens
        if len(array) <= limit:
            return array
        if self.spec.token_ids_need_special_tokens and self.suffix:
            return np.concatenate([array[: limit - len(self.suffix)], np.asarray(self.suffix, dtype=np.int64)])
        return array[:limit]

    def _check_lengths(self, ids: list[np.ndarray]) -> None:
        for i, array in enumerate(ids):
            if len(array) > self.spec.max_tokens:
                raise InvalidRequest(
                    f"input[{i}] is {len(array)} tokens long; {self.spec.name} takes at most "
                    f"{self.spec.max_tokens} tokens. Shorten it or set truncate=true.",
                    param="input",
                    code="context_length_exceeded",
                )


class VisionPreprocessor(TextPreprocessor):
    """Queries and pages of a ColQwen2 entry (``embedding.json`` from ``python -m export colqwen2``).

    Text inputs are queries, formatted as ``ColQwen2Processor.process_queries`` does:
    ``tokenize(query_prefix + text)`` (no special tokens added) followed by the processor's suffix
    (its pad token 10 times, then "\\n"); truncation cuts the text, never the suffix. Token-id
    inputs are refused (they would skip that formatting). Image and file parts become uint8 pages
    resized as the model's processor does, within the registry's ``vision.min_pixels`` and
    ``max_pixels`` (``grid``; ``gateway/images.py: resize_page``); a page of h x w pixels costs
    ``page_tokens(h, w)`` = (h/28) x (w/28) visual tokens plus the visual prompt's own in ``usage``.
    """

    def __init__(self, spec: ModelSpec, entry: StoreEntry) -> None:
        from gateway.images import PageGrid

        super().__init__(spec, entry)
        settings = entry.settings
        self.query_prefix = settings["query_prefix"]
        self.query_suffix = np.asarray(settings["query_suffix_ids"], dtype=np.int64)
        factor = int(settings["patch_size"]) * int(settings["merge_size"])
        self.grid = PageGrid(factor=factor, min_pixels=spec.vision.min_pixels, max_pixels=spec.vision.max_pixels)
        self.prompt_tokens = len(settings["page_prefix_ids"]) + len(settings["page_suffix_ids"])
        if self.spec.max_tokens <= len(self.query_suffix):
            raise ValueError(f"model {spec.name}: max_tokens must exceed the query suffix ({len(self.query_suffix)})")

    def page_tokens(self, height: int, width: int) -> int:
        """Tokens the model sees for a resized page of ``height`` x ``width`` pixels."""
        return (height // self.grid.factor) * (width // self.grid.factor) + self.prompt_tokens

    def texts(
        self, texts: Sequence[str], input_type: str | None, truncate: bool, override: str | None = None
    ) -> list[np.ndarray]:
        if override is not None:
            raise InvalidRequest(
                f"{self.spec.name} formats queries as its reference processor does; 'instruction' does not apply.",
                param="instruction",
            )
        for i, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"input[{i}] is an empty string; every input must have text.", param="input")
        if input_type == "document":
            raise InvalidRequest(
                f"{self.spec.name} embeds text as queries; send documents as image or file parts.", param="input_type"
            )
        formatted = [self.query_prefix + text for text in texts]
        encodings = self._full.encode_batch(formatted, add_special_tokens=False)
        room = self.spec.max_tokens - len(self.query_suffix)
        ids = []
        for i, encoding in enumerate(encodings):
            body = np.asarray(encoding.ids, dtype=np.int64)
            if len(body) > room and not truncate:
                raise InvalidRequest(
                    f"input[{i}] is {len(body) + len(self.query_suffix)} tokens long as a query; {self.spec.name} "
                    f"takes at most {self.spec.max_tokens} tokens. Shorten it or set truncate=true.",
                    param="input", code="context_length_exceeded",
                )
            ids.append(np.concatenate([body[:room], self.query_suffix]))
        return ids

    def token_ids(
        self, lists: Sequence[Sequence[int]], input_type: str | None, truncate: bool, override: str | None = None
    ) -> list[np.ndarray]:
        raise InvalidRequest(
            f"{self.spec.name} takes text queries, images and PDF files, not token ids.", param="input"
        )

"""Input preparation before batching: tokenization, instructions, truncation and id checks.

This runs in the gateway, per request, before anything reaches a runner: every input is turned
into int64 token ids ``(tokens,)`` that are inside the model's vocabulary and at most
``max_tokens`` long, or the request fails with a 400 that names the input. So a batch in a runner
only ever holds valid inputs, and ``usage`` counts the tokens the engine really sees.

Text is tokenized with the model's fast tokenizer (``tokenizer.json`` from its store entry)
without padding (the runner pads per sub-batch) and framed by its special tokens. The work is
bounded before it is done: a text is cut (or refused) at ``max_tokens x max_chars_per_token``
characters before tokenizing, then at ``max_tokens`` tokens; both cuts take the text, never the
instruction prepended to it, and never all of it.

Token-id inputs must be what the model's own tokenizer makes: ids inside its vocabulary, framed
by the special tokens it adds (``[CLS] ... [SEP]`` for BERT; nothing for a tokenizer that adds
none), unless the registry entry sets ``token_ids_need_special_tokens: false``. That frame is
how ids from another tokenizer are caught: LangChain's ``OpenAIEmbeddings`` sends tiktoken ids by
default, and most of them lie inside a 30k BERT vocabulary, so a range check alone would embed
them as garbage. A token-id input cut at ``max_tokens`` keeps its closing special tokens, as
truncated text does.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence

import numpy as np
from tokenizers import Tokenizer

from core.errors import InvalidRequest
from models.schema import GatewaySpec, ModelSpec
from models.store import StoreEntry, sha256_of

DEFAULT_CHARS_PER_TOKEN = GatewaySpec.model_fields["max_chars_per_token"].default
FIRST_WINDOW_CHARS_PER_TOKEN = 8  # real text takes 3.4 characters a token (median; at most 8.6 over 256 tokens)
_TRAILING_WORD = re.compile(r"\s\S*\Z")
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


def _last_whitespace(text: str, end: int) -> int:
    """The index of the last whitespace character before ``end`` in ``text``, or -1."""
    match = _TRAILING_WORD.search(text, 0, end)
    return match.start() if match else -1


def _text_tokens(encoding, instruction: str) -> int:
    """Tokens of ``encoding`` (of ``instruction + text``) that belong to the text."""
    return len(encoding.ids) - (bisect.bisect_left(encoding.offsets, (len(instruction), -1)) if instruction else 0)


class TextPreprocessor:
    """Turns one model's request inputs into validated token ids."""

    def __init__(self, spec: ModelSpec, entry: StoreEntry, max_chars_per_token: int = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.spec = spec
        tokenizer = Tokenizer.from_file(str(entry.file("tokenizer.json")))
        tokenizer.no_padding()  # the packaged MiniLM tokenizer pads every text to 128 otherwise
        tokenizer.no_truncation()
        self._full = tokenizer
        self.vocab_size = int(entry.settings.get("vocab_size") or tokenizer.get_vocab_size(True))
        self.prefix, self.suffix = special_token_frame(tokenizer)
        self.max_chars = spec.max_tokens * max_chars_per_token
        # two variants whose preprocessors have equal signatures get the same ids for the same
        # request (gateway/shadow.py reuses them)
        self.signature = (sha256_of(entry.file("tokenizer.json")), spec.max_tokens, spec.instructions,
                          spec.token_ids_need_special_tokens, self.max_chars, spec.vision)

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
        """Token ids per text: ``prefix + tokens(instruction + text) + suffix``, as the tokenizer
        frames one text. ``override``: the request's ``instruction`` (see ``instruction``).

        Bounded in two stages: a text longer than ``max_chars`` characters is cut there before it
        is tokenized (``truncate``) or refused; then the tokens are cut at ``max_tokens``. Either
        cut takes the input's own text, never the instruction; an instruction that leaves no token
        for the text is refused (400, ``param`` ``instruction`` or ``input_type``), as are empty
        texts and, when not truncating, over-long ones (``context_length_exceeded``). Blocking
        (runs in a worker thread for large inputs); ``encode_batch`` releases the GIL."""
        instruction = self.instruction(input_type, override)
        param = "instruction" if override is not None else "input_type"
        if len(instruction) > self.max_chars:
            raise InvalidRequest(f"{param} has {len(instruction)} characters; {self.spec.name} takes at most "
                                 f"{self.max_chars}.", param=param)
        room = self.spec.max_tokens - len(self.prefix) - len(self.suffix)
        cut = [self._cut_chars(i, text, truncate) for i, text in enumerate(texts)]
        encodings = self._encode(instruction, cut, room if truncate else None)
        ids = []
        for i, encoding in enumerate(encodings):
            body = encoding.ids
            own = bisect.bisect_left(encoding.offsets, (len(instruction), -1)) if instruction else 0
            if own >= room:
                raise InvalidRequest(
                    f"{param} is {own} tokens long; with the special tokens it leaves no room for the input in "
                    f"{self.spec.name}'s {self.spec.max_tokens} tokens. Shorten it.", param=param)
            if len(body) > room:
                if not truncate:
                    self._too_long(i, len(body) + len(self.prefix) + len(self.suffix))
                body = body[:room]
            ids.append(np.asarray(self.prefix + body + self.suffix, dtype=np.int64))
        return ids

    def _encode(self, instruction: str, texts: list[str], room: int | None) -> list:
        """``encode_batch`` of ``instruction + text`` for each text, without special tokens.

        With ``room`` (truncating), a text longer than ``room x FIRST_WINDOW_CHARS_PER_TOKEN``
        characters is first tokenized only up to the last whitespace inside that window: most text
        takes 3-5 characters a token, so that prefix already holds the ``room`` tokens kept, and
        they are the full text's first ones (the pre-tokenizer splits at whitespace, so nothing
        before it depends on what follows). Only a text whose prefix falls short is tokenized again
        up to its ``max_chars`` cut. This keeps a request of 2048 long texts from tokenizing
        5-10 times the characters it keeps."""
        window = room * FIRST_WINDOW_CHARS_PER_TOKEN if room is not None else None
        shortened = {}
        if window is not None and self._full.pre_tokenizer is not None:
            for i, text in enumerate(texts):
                if len(text) > window and (end := _last_whitespace(text, window)) > 0:
                    shortened[i] = text[:end]
        encodings = self._encode_each([instruction + shortened.get(i, text) for i, text in enumerate(texts)])
        again = [i for i in shortened if _text_tokens(encodings[i], instruction) < room]
        if again:
            for i, encoding in zip(again, self._encode_each([instruction + texts[i] for i in again]), strict=True):
                encodings[i] = encoding
        return encodings

    def _encode_each(self, texts: list[str]) -> list:
        """``encode_batch`` without special tokens; one text through ``encode``, which skips the
        batch's thread pool: 22-33 us against 34-40 for a short query (docs/benchmarks.md)."""
        if len(texts) == 1:
            return [self._full.encode(texts[0], add_special_tokens=False)]
        return self._full.encode_batch(texts, add_special_tokens=False)

    def _cut_chars(self, index: int, text: str, truncate: bool) -> str:
        """``text`` cut at ``max_chars`` characters (or, when not truncating, refused past them)."""
        if not text:
            raise InvalidRequest(f"input[{index}] is an empty string; every input must have text.", param="input")
        if len(text) <= self.max_chars:
            return text
        if not truncate:
            raise InvalidRequest(
                f"input[{index}] has {len(text)} characters; {self.spec.name} takes at most {self.max_chars} "
                f"({self.spec.max_tokens} tokens x max_chars_per_token). Shorten it or set truncate=true.",
                param="input", code="context_length_exceeded",
            )
        return text[: self.max_chars]

    def _too_long(self, index: int, tokens: int) -> None:
        raise InvalidRequest(
            f"input[{index}] is {tokens} tokens long; {self.spec.name} takes at most "
            f"{self.spec.max_tokens} tokens. Shorten it or set truncate=true.",
            param="input",
            code="context_length_exceeded",
        )

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
                self._too_long(i, len(array))


class VisionPreprocessor(TextPreprocessor):
    """Queries and pages of a ColQwen2 entry (``embedding.json`` from ``python -m export colqwen2``).

    Text inputs are queries, formatted as ``ColQwen2Processor.process_queries`` does:
    ``tokenize(query_prefix + text)`` (no special tokens added) followed by the processor's suffix
    (its pad token 10 times, then "\\n"); truncation cuts the text, never the suffix. Token-id
    inputs are refused (they would skip that formatting). Image and file parts become uint8 pages
    resized as the model's processor does, within the registry's ``vision.min_pixels`` and
    ``max_pixels`` (``grid``; ``core/pages.py: resize_page``); a page of h x w pixels costs
    ``page_tokens(h, w)`` = (h/28) x (w/28) visual tokens plus the visual prompt's own in ``usage``.
    """

    def __init__(self, spec: ModelSpec, entry: StoreEntry, max_chars_per_token: int = DEFAULT_CHARS_PER_TOKEN) -> None:
        from core.pages import PageGrid

        super().__init__(spec, entry, max_chars_per_token)
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
        if input_type == "document":
            raise InvalidRequest(
                f"{self.spec.name} embeds text as queries; send documents as image or file parts.", param="input_type"
            )
        formatted = [self.query_prefix + self._cut_chars(i, text, truncate) for i, text in enumerate(texts)]
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

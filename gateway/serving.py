"""The embeddings pipeline behind ``POST /v1/embeddings``.

``EmbeddingServing.embed`` is a fixed sequence: find the model (404), check the request against
it (400), admit the work (429), prepare inputs into validated token ids (400), run it on the
model's runner (503/500), then shape the OpenAI response. Everything that can be refused is
refused before the request reaches a batch, so one bad request never fails its batch-mates.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import orjson

from gateway.admission import Admission
from gateway.errors import InvalidRequest, ModelNotFound
from gateway.metrics import gateway_metrics
from gateway.preprocess import TextPreprocessor
from gateway.protocol import EmbeddingRequest
from gateway.runner_client import RunnerClient
from models.registry import Engine, ModelSpec, Pooling, Served
from runners.engine import decode_array
from runners.pooling import normalize


@dataclass(frozen=True)
class EmbeddingResult:
    body: bytes  # the JSON response
    model: str
    inputs: int
    tokens: int


class EmbeddingServing:
    def __init__(
        self,
        served: Served,
        preprocessors: dict[str, TextPreprocessor],
        runners: dict[Engine, RunnerClient],
        admission: Admission,
    ) -> None:
        self.served = served
        self.preprocessors = preprocessors
        self.runners = runners
        self.admission = admission

    def model(self, name: str) -> ModelSpec:
        spec = self.served.find(name)
        if spec is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist or is not served here; GET /v1/models lists the models.",
                param="model",
            )
        return spec

    async def embed(self, request: EmbeddingRequest, spec: ModelSpec) -> EmbeddingResult:
        items = self._items(request)
        if request.dimensions is not None:
            self._check_dimensions(spec, request.dimensions)
        inflight = gateway_metrics().inflight_inputs
        with self.admission.admit(len(items)):  # before tokenizing: a refused request costs nothing
            ids = await self._prepare(spec, request, items)
            tokens = sum(len(x) for x in ids)
            inflight.inc(len(ids))
            try:
                payloads = await self.runners[spec.engine].embed(spec.name, ids)
            finally:
                inflight.dec(len(ids))
        body = self._response(spec, request, payloads, tokens)
        return EmbeddingResult(body=body, model=spec.name, inputs=len(ids), tokens=tokens)

    def _items(self, request: EmbeddingRequest) -> list[str] | list[list[int]]:
        value = request.input
        if isinstance(value, str):
            return [value]
        if not value:
            raise InvalidRequest("'input' must not be empty.", param="input")
        if isinstance(value[0], int):
            return [value]  # one token-id list
        limit = self.served.gateway.max_inputs_per_request
        if len(value) > limit:
            raise InvalidRequest(
                f"'input' has {len(value)} items; at most {limit} are allowed per request.", param="input"
            )
        return value

    @staticmethod
    def _check_dimensions(spec: ModelSpec, dimensions: int) -> None:
        if spec.matryoshka is None:
            raise InvalidRequest(
                f"{spec.name} does not support 'dimensions' (its vectors have {spec.dimensions}).",
                param="dimensions",
            )
        if not spec.allows_dimensions(dimensions):
            raise InvalidRequest(
                f"'dimensions' must be between {spec.matryoshka.min} and {spec.matryoshka.max} for {spec.name}.",
                param="dimensions",
            )

    async def _prepare(
        self, spec: ModelSpec, request: EmbeddingRequest, items: Sequence[str] | Sequence[list[int]]
    ) -> list[np.ndarray]:
        preprocessor = self.preprocessors[spec.name]
        truncate = spec.truncate if request.truncate is None else request.truncate
        if isinstance(items[0], str):
            if len(items) == 1:  # one text tokenizes in microseconds: no thread hop
                return preprocessor.texts(items, request.input_type, truncate, request.instruction)
            return await asyncio.to_thread(preprocessor.texts, items, request.input_type, truncate, request.instruction)
        return preprocessor.token_ids(items, request.input_type, truncate, request.instruction)

    @staticmethod
    def _response(spec: ModelSpec, request: EmbeddingRequest, payloads: list[str], tokens: int) -> bytes:
        multi = spec.pooling is Pooling.MULTI
        passthrough = request.encoding_format == "base64" and request.dimensions is None
        data = []
        for index, payload in enumerate(payloads):
            if passthrough:
                embedding: object = payload
            else:
                vector = decode_array(payload, spec.dimensions, multi)
                if request.dimensions is not None:
                    vector = np.ascontiguousarray(vector[..., : request.dimensions])
                    if spec.normalize:
                        vector = normalize(vector)
                embedding = (
                    base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
                    if request.encoding_format == "base64"
                    else vector
                )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": spec.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

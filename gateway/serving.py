"""The pipelines behind ``POST /v1/embeddings`` and ``POST /v1/rerank``.

``EmbeddingServing.embed`` is a fixed sequence: find the model (404), check the request against
it (400), admit the work (429), prepare inputs into validated token ids or resized pages (400),
run it on the model's runner (503/500), then shape the OpenAI response. Everything that can be
refused is refused before the request reaches a batch, so one bad request never fails its
batch-mates. Work is bounded before it is done: counts and characters before parsing and
tokenizing (``gateway/parsing.py``, ``gateway/preprocess.py``), tokens
(``max_tokens_per_request``) and pages after. Tokenizing large inputs, decoding images (in the
image pool's worker processes) and building large responses happen off the event loop, so
``/livez``, ``/metrics`` and small requests keep answering while a 16 MiB request is handled.
``rerank`` prepares the query and documents the same way, then scores: MaxSim
(sum over query tokens of the best dot product with a document token) for multi-vector models,
cosine for pooled ones.
"""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from core.errors import InvalidRequest, ModelNotFound
from gateway import images
from gateway.admission import Admission
from gateway.image_pool import ImagePool, RequestBudget
from gateway.metrics import gateway_metrics
from gateway.preprocess import TextPreprocessor, VisionPreprocessor
from gateway.protocol import EmbeddingRequest, FilePart, ImagePart, RerankRequest
from gateway.routing import LiveRoute, RoutingTable, Target
from gateway.shadow import ShadowJob, Shadows
from models.schema import ModelSpec, Pooling, Served
from runners.pooling import normalize

INLINE_CHARS = 4096  # texts up to this many characters in all tokenize on the event loop (tens of microseconds)
INLINE_IDS = 4096  # token ids up to this many in all are checked on the event loop
RESPONSE_INLINE_INPUTS = 64  # larger responses are built in a worker thread


def _small(items: Sequence) -> bool:
    """Whether preparing ``items`` (texts or token-id lists) is cheap enough for the event loop."""
    if isinstance(items[0], str):
        return sum(len(text) for text in items) <= INLINE_CHARS
    return sum(len(ids) for ids in items) <= INLINE_IDS


@dataclass(frozen=True)
class Prepared:
    """Engine inputs in output order, with each one's PDF page (or None) and token count."""

    arrays: list[np.ndarray]
    pages: list[int | None]
    tokens: int


@dataclass(frozen=True)
class EmbeddingResult:
    body: bytes  # the JSON response
    model: str
    inputs: int
    tokens: int
    shadow: ShadowJob | None = None  # to start once the answer has gone out


class EmbeddingServing:
    def __init__(
        self,
        served: Served,
        routing: RoutingTable,
        admission: Admission,
        image_pool: ImagePool | None = None,  # needed when a vision model is served
    ) -> None:
        self.served = served
        self.routing = routing
        self.admission = admission
        self.image_pool = image_pool
        self.shadows = Shadows(self._prepare)

    def model(self, name: str) -> ModelSpec:
        spec = self.served.find(name)
        if spec is None:
            raise ModelNotFound(
                f"The model {name!r} does not exist or is not served here; GET /v1/models lists the models.",
                param="model",
            )
        return spec

    async def embed(self, request: EmbeddingRequest, spec: ModelSpec, route: LiveRoute,
                    target: Target) -> EmbeddingResult:
        """``request`` for served model ``spec``, answered by its variant ``target`` (of ``route``);
        the result may carry a shadow job for ``route``'s shadow variant (``gateway/shadow.py``)."""
        items = self._items(request.input)
        if request.dimensions is not None:
            self._check_dimensions(spec, request.dimensions)
        with self.admission.admit(len(items)):  # before tokenizing: a refused request costs nothing
            prepared = await self._prepare(target.preprocessor, target.spec, items, request.input_type,
                                           request.truncate, request.instruction)
            self._check_tokens(prepared.tokens)
            vectors = await self._run(spec.name, target, prepared.arrays)
        if len(vectors) < RESPONSE_INLINE_INPUTS:
            body = self._response(spec, request, vectors, prepared)
        else:  # serializing thousands of vectors takes milliseconds of event loop
            body = await asyncio.to_thread(self._response, spec, request, vectors, prepared)
        shadow = None
        if route.shadow is not None and route.shadow is not target and random.random() < route.fraction:
            shadow = ShadowJob(spec.name, target, route.shadow, items,
                               (request.input_type, request.truncate, request.instruction), prepared.arrays, vectors)
        return EmbeddingResult(body=body, model=spec.name, inputs=len(vectors), tokens=prepared.tokens, shadow=shadow)

    async def rerank(self, request: RerankRequest, spec: ModelSpec, route: LiveRoute,
                     target: Target) -> EmbeddingResult:
        """Scores of ``request.documents`` against ``request.query``, best first (JSON body)."""
        limit = self.served.gateway.max_inputs_per_request
        if len(request.documents) + 1 > limit:
            raise InvalidRequest(f"'documents' has {len(request.documents)} items; at most {limit - 1} are allowed.",
                                 param="documents")
        if not request.query:
            raise InvalidRequest("'query' must not be empty.", param="query")
        items = [request.query, *request.documents]
        with self.admission.admit(len(items)):
            query = await self._prepare(target.preprocessor, target.spec, items[:1], "query", None)
            documents = await self._prepare(target.preprocessor, target.spec, items[1:], None, None,
                                            param="documents")
            if len(documents.arrays) != len(request.documents):
                raise InvalidRequest("Each rerank document must be one text, image or PDF page; select one page with "
                                     "'pages'.", param="documents")
            self._check_tokens(query.tokens + documents.tokens)
            vectors = await self._run(spec.name, target, query.arrays + documents.arrays)
        multi = spec.pooling is Pooling.MULTI
        if multi:
            vectors = [vector.reshape(-1, spec.dimensions) for vector in vectors]
        scores = [self._score(vectors[0], document, multi) for document in vectors[1:]]
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: request.top_n]
        results = []
        for index in order:
            result: dict = {"index": index, "relevance_score": scores[index]}
            if request.return_documents:
                document = request.documents[index]
                result["document"] = {"text": document} if isinstance(document, str) else document.model_dump(
                    exclude={"type"}, exclude_none=True)
            results.append(result)
        tokens = query.tokens + documents.tokens
        body = orjson.dumps({"object": "rerank", "model": spec.name, "results": results,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
        return EmbeddingResult(body=body, model=spec.name, inputs=len(items), tokens=tokens)

    @staticmethod
    def _score(query: np.ndarray, document: np.ndarray, multi: bool) -> float:
        q, d = query.astype(np.float64), document.astype(np.float64)
        if multi:  # MaxSim: for each query token its best document token, summed
            return float((q @ d.T).max(axis=1).sum())
        return float(q @ d / max(np.linalg.norm(q) * np.linalg.norm(d), 1e-12))

    def _check_tokens(self, tokens: int) -> None:
        """Stage two of the bounds: the request's tokens after truncation (OpenAI's limit)."""
        limit = self.served.gateway.max_tokens_per_request
        if tokens > limit:
            raise InvalidRequest(f"The request's inputs come to {tokens} tokens; at most {limit} are allowed per "
                                 "request. Send fewer inputs per request.", param="input",
                                 code="max_tokens_per_request")

    @staticmethod
    async def _run(model: str, target: Target, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Flat float32 vectors of ``arrays``, in order (``gateway/runner_client.py``)."""
        inflight = gateway_metrics().inflight_inputs
        inflight.inc(len(arrays))
        try:
            return await target.runner.embed(model, arrays, target.name)
        finally:
            inflight.dec(len(arrays))

    def _items(self, value: object) -> list:
        if isinstance(value, (str, ImagePart, FilePart)):
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
        self,
        preprocessor: TextPreprocessor,
        spec: ModelSpec,
        items: Sequence,
        input_type: str | None,
        truncate: bool | None,
        instruction: str | None = None,
        param: str = "input",
    ) -> Prepared:
        """Engine inputs for ``items`` (texts, token-id lists, or image/file parts) for the registry
        model ``spec`` (a variant's) through its ``preprocessor``, or a 400. ``instruction``: the
        request's override of the registry's instruction (``preprocess.py``)."""
        truncate = spec.truncate if truncate is None else truncate
        parts = [i for i, item in enumerate(items) if isinstance(item, (ImagePart, FilePart))]
        if not parts:
            convert = preprocessor.texts if isinstance(items[0], str) else preprocessor.token_ids
            if _small(items):  # a short text or a few ids take microseconds: no thread hop
                ids = convert(items, input_type, truncate, instruction)
            else:  # off the event loop: /livez, /metrics and other requests go on meanwhile
                ids = await asyncio.to_thread(convert, items, input_type, truncate, instruction)
            return Prepared(ids, [None] * len(ids), sum(len(x) for x in ids))
        if not isinstance(preprocessor, VisionPreprocessor):
            raise InvalidRequest(f"{spec.name} takes text only; image and file parts need a vision model.",
                                 param=f"{param}[{parts[0]}]")
        texts = [i for i, item in enumerate(items) if isinstance(item, str)]
        if len(texts) + len(parts) != len(items):
            raise InvalidRequest(f"'{param}' mixes token ids with other items.", param=param)
        query_ids = await asyncio.to_thread(preprocessor.texts, [items[i] for i in texts], input_type, truncate,
                                            instruction) if texts else []
        pages = await self._pages(preprocessor, spec, items, parts, param)
        by_index: dict[int, list[tuple[np.ndarray, int | None]]] = {
            i: [(ids, None)] for i, ids in zip(texts, query_ids, strict=True)
        }
        by_index.update(pages)
        arrays, numbers = [], []
        for index in range(len(items)):
            for array, number in by_index[index]:
                arrays.append(array)
                numbers.append(number)
        tokens = sum(len(a) if a.ndim == 1 else preprocessor.page_tokens(*a.shape[:2]) for a in arrays)
        return Prepared(arrays, numbers, tokens)

    async def _pages(
        self, preprocessor: VisionPreprocessor, spec: ModelSpec, items: Sequence, parts: list[int], param: str
    ) -> dict[int, list[tuple[np.ndarray, int | None]]]:
        """Decoded, resized pages per part index, each part in a worker process of the image pool
        (``gateway/image_pool.py``); the first part to fail fails the request and stops the rest."""
        gateway = self.served.gateway
        limits = images.ImageLimits(gateway.max_image_bytes, gateway.max_image_pixels, gateway.max_image_aspect_ratio)
        limit = gateway.max_images_per_request
        declared = sum(1 if isinstance(items[i], ImagePart) or items[i].file.pages is None else len(items[i].file.pages)
                       for i in parts)
        if declared > limit:  # before decoding anything
            raise InvalidRequest(f"'{param}' holds more than {limit} images and pages; at most {limit} are "
                                 "allowed per request.", param=param, code="too_many_images")
        budget = RequestBudget(param, limit, gateway.max_request_pixels)
        tasks = {}
        for i in parts:
            part = items[i]
            task = images.PartTask(
                kind="image" if isinstance(part, ImagePart) else "file",
                url=part.image_url.url if isinstance(part, ImagePart) else part.file.file_data,
                pages=None if isinstance(part, ImagePart) or part.file.pages is None else tuple(part.file.pages),
                param=f"{param}[{i}]", dpi=spec.vision.pdf_dpi, grid=preprocessor.grid, limits=limits,
                test_faults=gateway.image_test_faults,
            )
            tasks[i] = asyncio.ensure_future(self.image_pool.run(task, budget))
        try:
            await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
            for i in parts:  # the first failed part in input order among those that finished
                if tasks[i].done() and not tasks[i].cancelled() and tasks[i].exception() is not None:
                    raise tasks[i].exception()
            return {i: [(array, number) for number, array in tasks[i].result()] for i in parts}
        finally:
            budget.closed = True
            for task in tasks.values():
                task.cancel()

    @staticmethod
    def _response(spec: ModelSpec, request: EmbeddingRequest, vectors: list[np.ndarray], prepared: Prepared) -> bytes:
        multi = spec.pooling is Pooling.MULTI
        data = []
        for index, vector in enumerate(vectors):
            item: dict = {"object": "embedding", "index": index}
            if multi:
                vector = vector.reshape(-1, spec.dimensions)
                item["shape"] = vector.shape
            if prepared.pages[index] is not None:
                item["page"] = prepared.pages[index]
            if request.dimensions is not None:
                vector = np.ascontiguousarray(vector[..., : request.dimensions])
                if spec.normalize:
                    vector = normalize(vector)
            item["embedding"] = (base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
                                 if request.encoding_format == "base64" else vector)
            data.append(item)
        return orjson.dumps(
            {
                "object": "list",
                "data": data,
                "model": spec.name,
                "usage": {"prompt_tokens": prepared.tokens, "total_tokens": prepared.tokens},
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )

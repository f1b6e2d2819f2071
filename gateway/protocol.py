"""OpenAI embeddings API models, field by field, plus this platform's extensions.

Request (``POST /v1/embeddings``), in OpenAI's field order:

- ``input``: a string, a list of strings, a list of token ids, or a list of token-id lists;
  never empty, no empty string, at most ``max_inputs_per_request`` (2048) items;
- ``model``: a served name or alias (``GET /v1/models``);
- ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32 bytes);
- ``dimensions``: only for models whose registry entry allows it (truncate, then re-normalise);
- ``user``: the caller; a served name with several variants sends each caller to the same one
  (a stable hash of ``user``; ``gateway/routing.py``), a request without it to the default.

Extensions: ``input_type`` (``query`` / ``document``: prepends the model's instruction),
``instruction`` (prepended instead of the registry's instruction; ``""`` prepends none; not for
vision models), ``truncate`` (default from the registry; ``false`` refuses over-long input with
400), and, for vision models (ColQwen2), content parts in ``input``: ``{"type": "image_url",
"image_url": {"url": "data:image/png;base64,..."}}`` and ``{"type": "file", "file": {"file_data":
"data:application/pdf;base64,...", "pages": [1, 3]}}`` (one output item per page). Multi-vector
outputs carry ``shape`` [tokens, dim].

``POST /v1/rerank`` (Jina/Cohere shape): ``RerankRequest`` -> ``RerankResponse``.
Unknown fields are refused with 400, as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    field_validator,
)

TokenIds = list[Annotated[StrictInt, Field(ge=0, lt=2**31)]]


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: StrictStr = Field(description="A base64 data URL: data:image/png|jpeg|webp;base64,...")
    detail: Literal["auto", "low", "high"] | None = Field(default=None, description="Accepted; unused.")


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["image_url"]
    image_url: ImageUrl


class FileData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    file_data: StrictStr = Field(description="A base64 data URL: data:application/pdf;base64,...")
    filename: StrictStr | None = None
    pages: list[Annotated[StrictInt, Field(ge=1)]] | None = Field(
        default=None, description="Extension: 1-based pages to embed, in this order (default: all)."
    )


class FilePart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["file"]
    file: FileData


ContentPart = Annotated[ImagePart | FilePart, Field(discriminator="type")]
EmbeddingInput = StrictStr | list[StrictStr] | TokenIds | list[TokenIds] | ContentPart | list[StrictStr | ContentPart]


def input_shape(value: Any) -> str:
    """Which form of ``EmbeddingInput`` a parsed ``input`` is, from its type and its first item."""
    if isinstance(value, dict):
        return "part"
    if not isinstance(value, list) or not value:
        return "text" if not isinstance(value, list) else "texts"
    first = value[0]
    if isinstance(first, int) and not isinstance(first, bool):
        return "ids"
    if isinstance(first, list):
        return "id_lists"
    return "parts" if any(isinstance(item, dict) for item in value) else "texts"


# The same forms, validated as the one form ``input_shape`` picks: a plain union tries each form
# in turn and records an error per item for each form that fails (list-of-strings first: 5.5 s
# for a list of 3 M token ids, 0.14 s this way).
_INPUT_BY_SHAPE = TypeAdapter(Annotated[
    Annotated[StrictStr, Tag("text")] | Annotated[list[StrictStr], Tag("texts")] | Annotated[TokenIds, Tag("ids")]
    | Annotated[list[TokenIds], Tag("id_lists")] | Annotated[ContentPart, Tag("part")]
    | Annotated[list[StrictStr | ContentPart], Tag("parts")],
    Discriminator(input_shape),
])


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: EmbeddingInput = Field(
        description="Text or token ids to embed: a string, an array of strings, an array of "
        "token ids, or an array of token-id arrays."
    )
    model: StrictStr = Field(description="A model name or alias from GET /v1/models.")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: little-endian float32 bytes, base64-encoded."
    )
    dimensions: StrictInt | None = Field(
        default=None, ge=1, description="Output size for matryoshka models: truncate, then re-normalise."
    )
    user: StrictStr | None = Field(
        default=None, description="The caller. A model with several variants (A/B tests, canaries) sends each user "
        "to the same variant; requests without it go to the default variant. The header X-Embedding-Variant "
        "forces one.",
    )
    input_type: Literal["query", "document"] | None = Field(
        default=None, description="Extension: prepend the model's query or document instruction."
    )
    instruction: StrictStr | None = Field(
        default=None,
        description="Extension: text prepended to each text input instead of the registry's instruction "
        "for `input_type` (for Qwen3-Embedding: `Instruct: {task}\\nQuery:`); an empty string prepends nothing.",
    )
    truncate: StrictBool | None = Field(
        default=None,
        description="Extension: cut inputs at the model's token limit (default from the registry); "
        "false refuses over-long inputs with 400.",
    )

    @field_validator("input", mode="wrap")
    @classmethod
    def _one_form(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Validates ``input`` as the form it has (``input_shape``), not by trying each in turn;
        the OpenAPI schema still lists every form."""
        return _INPUT_BY_SHAPE.validate_python(value)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | list[list[float]] | str = Field(
        description="A vector; for multi-vector models a list of rows (float) or the rows' float32 "
        "bytes concatenated (base64), with `shape`."
    )
    shape: tuple[int, int] | None = Field(default=None, description="Multi-vector models only: [tokens, dim].")
    page: int | None = Field(default=None, description="For items from a PDF file part: its 1-based page.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class VariantCard(BaseModel):
    id: str = Field(description="The variant's name: the value of X-Embedding-Variant.")
    model: str = Field(description="The registry model that computes it.")
    weight: float = Field(description="Its share of the callers that send `user` (the shares add up to 1).")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    aliases: list[str]
    engine: str
    dimensions: int
    max_tokens: int
    matryoshka_dimensions: tuple[int, int] | None = Field(
        description="[min, max] accepted by `dimensions`, or null."
    )
    pooling: str
    variants: list[VariantCard] = Field(
        description="The variants that answer for this name (one, `default`, unless an A/B test or canary is "
        "configured), each with its share of the callers that send `user`."
    )
    default_variant: str = Field(description="The variant of requests without `user` or X-Embedding-Variant.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class RerankRequest(BaseModel):
    """Jina/Cohere rerank: score each document against the query, best first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: StrictStr
    query: StrictStr
    documents: list[StrictStr | ContentPart] = Field(
        min_length=1, description="Texts, or image/file parts (one page each) for vision models."
    )
    top_n: StrictInt | None = Field(default=None, ge=1, description="Return only the best n (default: all).")
    return_documents: StrictBool = Field(default=True, description="Echo each document in its result.")


class RerankDocument(BaseModel):
    text: str | None = None
    image_url: ImageUrl | None = None
    file: FileData | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    object: Literal["rerank"] = "rerank"
    model: str
    results: list[RerankResult]
    usage: RerankUsage

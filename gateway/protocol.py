"""OpenAI embeddings API models, field by field, plus this platform's extensions.

Request (``POST /v1/embeddings``), in OpenAI's field order:

- ``input``: a string, a list of strings, a list of token ids, or a list of token-id lists;
  never empty, no empty string, at most ``max_inputs_per_request`` (2048) items;
- ``model``: a served name or alias (``GET /v1/models``);
- ``encoding_format``: ``float`` (default) or ``base64`` (little-endian float32 bytes);
- ``dimensions``: only for models whose registry entry allows it (truncate, then re-normalise);
- ``user``: accepted and ignored.

Extensions: ``input_type`` (``query`` / ``document``: prepends the model's instruction),
``instruction`` (prepended instead of the registry's instruction; ``""`` prepends none) and
``truncate`` (default from the registry; ``false`` refuses over-long input with 400).
Unknown fields are refused with 400, as OpenAI does.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

TokenIds = list[Annotated[StrictInt, Field(ge=0, lt=2**31)]]
EmbeddingInput = Union[StrictStr, list[StrictStr], TokenIds, list[TokenIds]]


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
    user: StrictStr | None = Field(default=None, description="Accepted for compatibility; unused.")
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


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


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

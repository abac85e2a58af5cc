"""The HTTP API's request and response bodies (FastAPI validates requests and serves their schema).

Requests are strict: unknown fields and wrongly typed values are refused (422) with the field
named, never coerced. Limits that a deployment configures (history length, candidates, k, audio
size) are checked by the endpoints against :class:`atflrec.serving.config.Limits`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ItemId = str
COLD_ITEM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class HistoryEntry(Request):
    item_id: ItemId = Field(..., min_length=1, max_length=256, description="a catalogue item")
    liked: bool = Field(..., description="true: the user liked it; false: disliked")


class HistoryRequest(Request):
    history: list[HistoryEntry] = Field(
        ..., min_length=1, description="the user's interactions, oldest first (at most limits.max_history)"
    )


class ScoreRequest(HistoryRequest):
    candidates: list[ItemId] = Field(
        ..., min_length=1, description="catalogue items to score (at most limits.max_candidates)"
    )


class RecommendRequest(HistoryRequest):
    k: int = Field(10, ge=1, description="how many items to return (at most limits.max_k)")


class ItemRequest(Request):
    item_id: str = Field(..., pattern=COLD_ITEM_ID, description="id of the new item (letters, digits, _.:-)")
    title: str = Field(..., min_length=1, max_length=500, description="the item's title, as prompts show it")
    tags: list[str] = Field(default_factory=list, max_length=64, description="free-form tags (kept, not prompted)")
    audio: str = Field(..., min_length=1, description="the item's audio file, base64-encoded")
    audio_format: Literal["wav", "flac"] = Field("wav", description="container of the audio file")


class ScoredItem(BaseModel):
    item_id: str
    title: str
    score: float = Field(..., description="P(Yes): the model's probability that the user likes the item")


class ScoreResponse(BaseModel):
    model: str
    scores: list[ScoredItem] = Field(..., description="one per candidate, in request order")


class RecommendedItem(ScoredItem):
    retrieval_score: float = Field(..., description="the retrieval stage's score (history similarity + popularity)")
    retrieval_rank: int = Field(..., description="1-based rank in the retrieval shortlist the LLM re-ranked")


class RecommendResponse(BaseModel):
    model: str
    items: list[RecommendedItem] = Field(
        ..., description="the top k unseen catalogue items by the LLM's score, best first")
    retrieved: int = Field(..., description="items the retrieval stage shortlisted; the LLM scored exactly these")
    catalogue_size: int = Field(..., description="items in the catalogue")


class ItemResponse(BaseModel):
    item_id: str
    title: str
    tags: list[str]
    n_frames: int = Field(..., description="frames of real audio in the item's features")
    catalogue_size: int


class Health(BaseModel):
    status: Literal["ok"]
    replica: str
    items: int
    cold_items: int
    models: list[str]
    batches: int = Field(..., description="batched model calls this replica made")
    queries: int = Field(..., description="scoring requests those calls served")
    bad_items: dict[str, str] = Field(
        default_factory=dict, description="files in items_dir that were skipped, and why (never fatal)")


class DeletedItem(BaseModel):
    item_id: str
    catalogue_size: int


class ModelInfo(BaseModel):
    model_id: str
    artifact: str = Field(..., description="the artifact directory's name (no absolute paths are shown)")
    base_model: str
    adapters: list[str]
    fusion: str
    audio_n_mels: int | None
    config: dict[str, Any]
    versions: dict[str, str]
    metrics: dict[str, Any]
    tracking: dict[str, str] | None = Field(
        None, description="the MLflow run that produced the model (run_id, experiment_id; the tracking server's "
                          "uri when it is one), or null when its training was not tracked")
    served_models: list[str] = Field(..., description="ids a serve_multiplexed_model_id header may name")
    default_model: str
    limits: dict[str, Any]
    catalogue_size: int


class FieldError(BaseModel):
    field: str = Field(..., description="dotted path of the offending field, e.g. history.2.item_id")
    message: str


class ErrorResponse(BaseModel):
    error: str = Field(..., description="one line per problem: 'field: message'")
    fields: list[FieldError]

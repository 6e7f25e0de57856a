"""Feedback: the true species of flowers the service predicted; needs the token.

The body is one `Feedback` or a list of them. It is validated here rather than by FastAPI: a
union of the two would report each problem once per branch, under the branch's name, where a
client needs `actual_species` (or `3.actual_species` in a list).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from iris_gateway.auth import TokenRequired, Unauthorized
from iris_gateway.feedback import (
    MAX_FEEDBACK_ITEMS,
    BulkFeedbackResult,
    FeedbackAlreadyGiven,
    FeedbackResult,
    FeedbackUnavailable,
    PredictionNotFound,
)
from iris_gateway.state import StateDep
from iris_shared.feedback import Feedback
from iris_shared.http import DocstringRoute, error_responses

router = APIRouter(tags=["monitoring"], route_class=DocstringRoute, dependencies=[TokenRequired])

JSON_BODIES = (Feedback,)

_ONE: Final = TypeAdapter(Feedback)
_MANY: Final = TypeAdapter(
    Annotated[list[Feedback], Field(min_length=1, max_length=MAX_FEEDBACK_ITEMS)]
)
_FEEDBACK_REF = {"$ref": f"#/components/schemas/{Feedback.__name__}"}
_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        _FEEDBACK_REF,
                        {
                            "type": "array",
                            "items": _FEEDBACK_REF,
                            "minItems": 1,
                            "maxItems": MAX_FEEDBACK_ITEMS,
                        },
                    ]
                }
            }
        },
    }
}


def _parse(body: bytes) -> Feedback | list[Feedback]:
    adapter: TypeAdapter[Any] = _MANY if body.lstrip()[:1] == b"[" else _ONE
    try:
        return adapter.validate_json(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        # Reported exactly as FastAPI reports a body it validated itself.
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        ) from None


@router.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackResult | BulkFeedbackResult,
    responses={
        202: {
            "description": "One label: accepted (`FeedbackResult`). A list: what became of "
            "each label, in the order sent, with the counts (`BulkFeedbackResult`); labels "
            "that were not accepted are reported there, not as errors.",
        },
        **error_responses(
            400,
            Unauthorized,
            413,
            415,
            PredictionNotFound,
            FeedbackAlreadyGiven,
            FeedbackUnavailable,
        ),
    },
    openapi_extra=_REQUEST_BODY,
)
async def give_feedback(request: Request, state: StateDep) -> FeedbackResult | BulkFeedbackResult:
    """Record the true species of predicted flowers, by the prediction's request id and row."""
    feedback = _parse(await request.body())
    if isinstance(feedback, list):
        return await state.feedback.give_many(feedback)
    return await state.feedback.give(feedback)

"""OpenAPI error responses come from the exception classes a route raises."""

from __future__ import annotations

from iris_shared.http import ErrorResponse, Overloaded, ServiceError, error_responses


class StoreDown(ServiceError):
    """The store cannot be reached.

    More detail that the OpenAPI description leaves out."""

    status_code = 503
    error = "store_down"
    retry_after_s = 5


class NoSuchThing(ServiceError):
    """No thing has this id."""

    status_code = 404
    error = "no_such_thing"


def test_each_class_gives_its_status_code_and_description() -> None:
    documented = error_responses(400, NoSuchThing, StoreDown, Overloaded)

    assert set(documented) == {400, 404, 503}
    assert documented[400] == {"model": ErrorResponse}
    assert documented[404]["description"] == "`no_such_thing`: No thing has this id."
    # Two errors of one status are listed together.
    assert documented[503]["description"] == (
        "`store_down`: The store cannot be reached.\n\n`overloaded`: More requests are in flight "
        "than the server takes; the client should retry soon."
    )


def test_a_class_with_retry_after_documents_the_header() -> None:
    documented = error_responses(NoSuchThing, StoreDown)

    assert "Retry-After" in documented[503]["headers"]
    assert "headers" not in documented[404]


def test_a_raised_error_carries_its_retry_after() -> None:
    assert StoreDown("down").headers == {"Retry-After": "5"}
    assert StoreDown("down", retry_after_s=30).headers == {"Retry-After": "30"}
    assert NoSuchThing("x").headers == {}

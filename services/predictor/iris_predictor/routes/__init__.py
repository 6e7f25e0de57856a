"""One module per resource; every router uses `DocstringRoute`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fastapi.routing import APIRoute


class DocstringRoute(APIRoute):
    """Use the endpoint's one-sentence docstring as its OpenAPI summary."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        doc = inspect.getdoc(endpoint)
        if kwargs.get("summary") is None and doc:
            kwargs["summary"] = doc.splitlines()[0]
        super().__init__(path, endpoint, **kwargs)

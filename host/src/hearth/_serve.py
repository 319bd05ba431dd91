"""``hearth._serve``, as the README names it: ``create_app(host)`` mounts the API v1 on a ``Host``
you opened. The API lives in ``hearth._server._app`` (its shapes in ``_schemas``), the daemon in
``hearth._server._daemon``; this module keeps the documented path."""

from ._server._app import create_app, openapi_document
from ._server._daemon import ServeError, configure_logging, default_socket, read_token, serve
from ._server._schemas import API, STATUS

__all__ = [
    "API",
    "STATUS",
    "ServeError",
    "configure_logging",
    "create_app",
    "default_socket",
    "openapi_document",
    "read_token",
    "serve",
]

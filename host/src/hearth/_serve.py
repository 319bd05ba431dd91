"""``hearth._serve``, as the README names it: ``create_app(host)`` mounts the API v1 on a ``Host``
you opened. The daemon lives in ``hearth._server``; this module keeps the documented path."""

from ._server._app import create_app, openapi_document, serve

__all__ = ["create_app", "openapi_document", "serve"]

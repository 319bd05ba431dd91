"""``hearth serve``: the API v1 app and the daemon that serves it (``_app``)."""

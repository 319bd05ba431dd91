"""Adapters as the host sees them: the JSON-RPC client of one adapter process (``_client``),
finding, refusing and trusting adapter executables (``_discovery``), writing the project's
adapter lock (``_locking``) and keeping one adapter process per driver (``_supervisor``)."""

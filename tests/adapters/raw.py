"""A raw-protocol adapter that misbehaves on purpose; MODE is substituted by the test."""

import json
import sys
import time
from typing import Any

MODE = "@MODE@"
out = sys.stdout.buffer


def send(message: Any) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


if MODE == "die_before_handshake":
    sys.stderr.write("raw: cannot start: credentials file /etc/raw/creds is missing\n")
    sys.exit(3)
if MODE == "silent":
    time.sleep(600)

for line in sys.stdin.buffer:
    request = json.loads(line)
    if "id" not in request:
        continue
    if request["method"] == "initialize":
        send(
            {
                "jsonrpc": "2.0",
                "id": request["id"],
                "result": {
                    "protocol_version": 1,
                    "adapter": {"name": "hearth-adapter-raw", "version": "0"},
                    "driver": "@DRIVER@",
                    "config_schema": None,
                    "capabilities": {
                        "methods": ["provision", "status", "upgrade", "teardown"],
                        "progress": True,
                        "cancel": True,
                    },
                },
            }
        )
    elif request["method"] == "shutdown":
        send({"jsonrpc": "2.0", "id": request["id"], "result": None})
    elif MODE == "garbage":
        out.write(b"DEBUG: connecting to backend (this is not JSON)\n")
        out.flush()
    elif MODE == "unknown_id":
        send({"jsonrpc": "2.0", "id": request["id"] + 1000, "result": None})
    elif MODE == "huge_line":
        out.write(b'{"jsonrpc": "2.0", "result": "' + b"x" * (17 * 1024 * 1024) + b'"}\n')
        out.flush()
    elif MODE == "bad_result":
        send({"jsonrpc": "2.0", "id": request["id"], "result": {"state": "on fire"}})
    elif MODE == "deep_nesting":
        out.write(b"[" * 100_000 + b"]" * 100_000 + b"\n")
        out.flush()

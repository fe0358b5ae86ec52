"""A MongoDB-compatible development server (not for production).

Real PyMongo clients see a writable one-node replica set: `DevServer` runs it in-process (async
context manager or `start_in_thread()`), `serve()` yields just its URI, and
`partner-sync devserver` / `python -m devserver` run it from the command line.
"""

from __future__ import annotations

from devserver._server import DevServer, RemoteBindRefused, ServerThread, serve

__all__ = ["DevServer", "RemoteBindRefused", "ServerThread", "serve"]

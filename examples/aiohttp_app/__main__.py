"""``python -m examples.aiohttp_app [port]``: serve the aiohttp example.

Uses ``$ASYNC_BATCH_DSN`` if set, else starts a throwaway PostgreSQL server.
"""

from __future__ import annotations

import sys

from aiohttp import web

from examples.aiohttp_app.app import create_app


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    web.run_app(create_app(), host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()

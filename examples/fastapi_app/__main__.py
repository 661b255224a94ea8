"""``python -m examples.fastapi_app [port]``: serve the FastAPI example with uvicorn.

Uses ``$ASYNC_BATCH_DSN`` if set, else starts a throwaway PostgreSQL server.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import uvicorn  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        sys.exit("uvicorn is not installed: pip install 'async-batch[examples]'")
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run("examples.fastapi_app.app:app", host="127.0.0.1", port=port)


if __name__ == "__main__":
    main()

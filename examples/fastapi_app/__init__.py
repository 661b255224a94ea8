"""The sequence import service on FastAPI: ``python -m examples.fastapi_app``."""

from examples.fastapi_app.app import create_app

__all__ = ["create_app"]

"""The sequence import service on aiohttp: ``python -m examples.aiohttp_app``."""

from examples.aiohttp_app.app import create_app

__all__ = ["create_app"]

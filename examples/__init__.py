"""Runnable examples of async_batch in web services (not part of the installed package)."""

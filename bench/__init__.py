"""Benchmarks for async_batch (placeholder: scenarios come later)."""

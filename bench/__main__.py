"""Entry point of ``python -m bench`` (placeholder)."""

print("no benchmarks yet")

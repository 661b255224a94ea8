"""Entry point of ``python -m bench.demo`` (placeholder)."""

print("no demo yet")

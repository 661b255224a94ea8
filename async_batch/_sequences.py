"""Where a table's ids come from, and fetching many of them in one round trip.

Sequences are found in the catalog (``pg_get_serial_sequence`` covers SERIAL and IDENTITY) or
from the Column's own ``Sequence`` -- never guessed from the table name. The id-fetching query
names tables and sequences only as *bound text values* that the server resolves at execution
time, so ``search_path`` changes and ``schema_translate_map`` tenants always draw from their
own sequence; only the yes/no eligibility answer is cached, keyed by engine and by the
effective (translated) table reference.
"""

from __future__ import annotations

import collections
import itertools
import json
import operator
import struct
import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, Identity, Integer, Table
from sqlalchemy import Sequence as SASequence
from sqlalchemy.engine import Connection, Engine

from . import _sa
from ._report import logger


@dataclass(frozen=True)
class IdSource:
    """How to obtain new values for one integer primary-key column."""

    table_ref: str
    """Quoted, schema-translated table name as the server should parse it."""
    column: str
    sequence_ref: str | None
    """Quoted explicit sequence name, or None to ask ``pg_get_serial_sequence``."""

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.table_ref, self.column, self.sequence_ref)


@dataclass(frozen=True)
class TableMeta:
    """Catalog facts about a table, looked up once per engine and effective name."""

    id_ok: bool
    id_reason: str | None
    identity_always: bool
    oid: int | None
    """The table the lookup described; the id prefetch re-checks it (``search_path``)."""
    column_types: Mapping[str, str]
    """column name -> its type without modifiers (for unnest array casts)."""
    column_oids: Mapping[str, int]
    """column name -> type OID (what a result row's description reports for it)."""
    text_only_columns: frozenset[str]
    """Columns asyncpg can only send as text: binary COPY cannot write them."""
    array_columns: frozenset[str]
    defaulted_columns: frozenset[str]
    """Columns for which "omitted from the INSERT" differs from NULL (DEFAULT, identity,
    generated, domain default)."""
    sequenced_columns: frozenset[str] = frozenset()
    """Columns other than the id whose default draws from a sequence (identity, serial,
    ``nextval``): rows omitting them must be inserted in the unit of work's order."""
    triggers: bool = False
    """INSERT triggers (row or statement level): they may change or skip rows, or count
    statements, in ways only the unit of work's own INSERTs reproduce."""
    rules: bool = False
    row_security: bool = False
    """Row-level security enabled: COPY FROM is refused for roles it applies to."""
    retyped: tuple[tuple[str, str, str], ...] = ()
    """(column, mapped type, database type) where a native INSERT casts the value to a type
    other than the column's (and a direct write could store something else)."""

    always_columns: frozenset[str] = frozenset()
    """GENERATED ALWAYS identity columns: an INSERT (not COPY) refuses values for them."""
    unique_columns: frozenset[str] = frozenset()
    """Columns of the table's unique indexes and exclusion constraints."""
    unique_any: bool = False
    """A unique index or exclusion constraint has an expression or a predicate."""
    from_str_columns: frozenset[str] = frozenset()
    """Columns asyncpg sends from a ``str`` value (string types and types it parses from
    one, or sends only as text)."""

    def copy_refused(self, columns: Iterable[str]) -> bool:
        """Whether binary COPY cannot write these columns: row-level security, or a type
        asyncpg only sends as text."""
        return self.row_security or not self.text_only_columns.isdisjoint(columns)

    def unfit_reason(self, table: str, trust_triggers: bool = False) -> str | None:
        """Why no row of this table can be written by async_batch, if so."""
        if self.triggers and not trust_triggers:
            return f"table {table} has INSERT triggers"
        if self.rules:
            return f"table {table} has rules"
        if self.retyped:
            col, mapped, actual = self.retyped[0]
            return (
                f"column {table}.{col} is {actual} in the database, and a native INSERT casts "
                f"its values to {mapped} first"
            )
        return None


_LOOKUP_SQL = """
SELECT
  to_regclass($1)::oid::int8 AS oid,
  s.seq,
  CASE WHEN s.seq IS NULL THEN NULL
       ELSE has_sequence_privilege(s.seq, 'USAGE, UPDATE')  -- nextval needs either
  END AS priv,
  (SELECT a.attidentity::text FROM pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attname = $2 AND NOT a.attisdropped) AS ident,
  (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped) AS names,
  -- the unconstrained type, for unnest's array casts: format_type without a typmod names
  -- character and bit, which in a cast mean character(1) and bit(1)
  (SELECT array_agg(CASE a.atttypid WHEN 'bpchar'::regtype THEN 'bpchar'
                                    WHEN 'bit'::regtype THEN 'varbit'
                                    ELSE format_type(a.atttypid, NULL) END ORDER BY a.attnum)
     FROM pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped) AS types,
  -- as text: an int8[] result would cost asyncpg a type introspection per connection
  (SELECT array_agg(a.atttypid::text ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped) AS type_oids,
  -- columns asyncpg has no binary encoder for (it sends them as text, which binary COPY
  -- cannot take): anything but an enum or a pg_catalog type with a binary codec, or an
  -- array of one
  (SELECT array_agg(a.attname::text) FROM pg_attribute a
     JOIN pg_type t ON t.oid = a.atttypid
     JOIN pg_type b ON b.oid = CASE WHEN t.typcategory = 'A' THEN t.typelem ELSE t.oid END
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND NOT (b.typtype = 'e' OR (b.typnamespace = 'pg_catalog'::regnamespace
               AND b.typname = ANY (@BINARY@::text[])))) AS text_only,
  -- columns one unnest() cannot pass: arrays and multiranges (their values are lists; a
  -- list of lists is one array of more dimensions), composites (unnest expands their fields)
  (SELECT array_agg(a.attname::text) FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
     LEFT JOIN pg_type b ON b.oid = t.typbasetype
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND (t.typcategory = 'A' OR t.typtype IN ('m', 'c')
           OR b.typcategory = 'A' OR b.typtype IN ('m', 'c'))) AS arrays,
  (SELECT array_agg(a.attname::text) FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> ''
           OR (t.typtype = 'd' AND t.typdefault IS NOT NULL))) AS defaulted,
  -- columns other than the id whose default draws from a sequence: their values follow
  -- the order rows are inserted in
  (SELECT array_agg(a.attname::text) FROM pg_attribute a
     LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attname <> $2
      AND (a.attidentity <> ''
           OR pg_get_expr(ad.adbin, ad.adrelid) LIKE '%nextval(%')) AS sequenced,
  -- the table's own triggers and its partitions' (rows are routed there)
  EXISTS (SELECT 1 FROM pg_trigger tg
           WHERE (tg.tgrelid = to_regclass($1)
                  OR tg.tgrelid IN (SELECT p.relid FROM pg_partition_tree(to_regclass($1)) p))
             AND NOT tg.tgisinternal AND (tg.tgtype & 4) <> 0) AS triggers,
  (SELECT c.relhasrules FROM pg_class c WHERE c.oid = to_regclass($1)) AS rules,
  (SELECT c.relrowsecurity FROM pg_class c WHERE c.oid = to_regclass($1)) AS row_security,
  -- columns whose native bind cast ($n::<mapped type>) can store something else than a
  -- value written to the column directly: a cast to another type (strings are alike under
  -- any string type), or to a type modifier (precision, scale, length) other than the
  -- column's, or to a length of a string or bit type (an explicit cast truncates or pads
  -- where storing into the column raises)
  (SELECT json_agg(json_build_array(a.attname, j.value, format_type(a.atttypid, a.atttypmod)))::text
     FROM pg_attribute a
     JOIN json_each_text($4::text::json) j ON j.key = a.attname
     JOIN pg_type ct ON ct.oid = a.atttypid
     LEFT JOIN pg_type mt ON mt.oid = to_regtype(j.value)
     LEFT JOIN pg_type me
       ON me.oid = CASE WHEN mt.typcategory = 'A' THEN mt.typelem ELSE mt.oid END
     CROSS JOIN LATERAL (SELECT
       replace(substring(j.value FROM '[(]([^)]*)[)]'), ' ', '') AS mapped_mod,
       replace(substring(format_type(a.atttypid, a.atttypmod) FROM '[(]([^)]*)[)]'), ' ', '')
         AS column_mod) m
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND ((mt.oid IS DISTINCT FROM a.atttypid
            AND NOT (mt.typcategory = 'S' AND ct.typcategory = 'S'))
           -- FLOAT(p) only chooses between real and double precision (compared above)
           OR (m.mapped_mod IS NOT NULL AND me.oid NOT IN ('float4'::regtype, 'float8'::regtype)
               AND (m.mapped_mod IS DISTINCT FROM m.column_mod
                    OR me.typcategory IN ('S', 'V')))
           -- INTERVAL's fields (INTERVAL DAY) are a type modifier without parentheses
           OR (me.oid = 'interval'::regtype
               AND replace(lower(j.value), ' ', '')
                   <> replace(format_type(a.atttypid, a.atttypmod), ' ', '')))) AS retyped,
  (SELECT array_agg(a.attname::text) FROM pg_attribute a
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND a.attidentity = 'a') AS always,
  -- what an UPDATE of the table's rows can free for a new row: the columns of its unique
  -- indexes and exclusion constraints (declared in the model or not), and whether one of
  -- them has an expression or a predicate (then any column may)
  (SELECT array_agg(DISTINCT a.attname::text) FROM pg_index i
     JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = to_regclass($1) AND (i.indisunique OR i.indisexclusion)) AS unique_cols,
  EXISTS (SELECT 1 FROM pg_index i
           WHERE i.indrelid = to_regclass($1) AND (i.indisunique OR i.indisexclusion)
             AND (i.indexprs IS NOT NULL OR i.indpred IS NOT NULL)) AS unique_any,
  -- columns whose values asyncpg sends from a str as the server would parse it (a string
  -- type, json, xml, uuid, an enum; or one it can only send as text), domains by their base
  -- type; not inet/cidr, whose str asyncpg parses with Python's ipaddress (other rules)
  (SELECT array_agg(a.attname::text) FROM pg_attribute a
     JOIN pg_type t0 ON t0.oid = a.atttypid
     JOIN pg_type t ON t.oid = CASE WHEN t0.typtype = 'd' THEN t0.typbasetype ELSE t0.oid END
    WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
      AND (t.typcategory = 'S' OR t.typtype = 'e'
           OR t.oid IN ('json'::regtype, 'jsonb'::regtype, 'jsonpath'::regtype,
                        'xml'::regtype, 'uuid'::regtype)
           OR (t.typtype = 'b' AND t.typcategory <> 'A'
               AND NOT (t.typnamespace = 'pg_catalog'::regnamespace
                        AND t.typname = ANY (@BINARY@::text[]))))) AS from_str
FROM (
  SELECT CASE
    WHEN $3::text IS NOT NULL THEN to_regclass($3::text)
    WHEN EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = to_regclass($1)
                 AND a.attname = $2 AND NOT a.attisdropped)
      THEN to_regclass(pg_get_serial_sequence($1, $2))
  END AS seq
) s
"""

# the pg_catalog types asyncpg has a binary codec for (any other base type it sends as text)
_BINARY_TYPES = """'{bool,bytea,char,name,int2,int4,int8,float4,float8,numeric,text,varchar,
  bpchar,date,time,timetz,timestamp,timestamptz,interval,uuid,json,jsonb,jsonpath,inet,cidr,
  bit,varbit,oid,xid,cid,tid,pg_lsn,point,line,lseg,box,path,polygon,circle,int4range,
  int8range,numrange,tsrange,tstzrange,daterange,int4multirange,int8multirange,nummultirange,
  tsmultirange,tstzmultirange,datemultirange}'"""
_LOOKUP_SQL = _LOOKUP_SQL.replace("@BINARY@", _BINARY_TYPES)

# One fixed statement for any number of sequences and ids, prepared once per connection. Input
# is JSON text, output one bytea per source: its ids as 8-byte big-endian integers (int8send),
# decoded by one struct.unpack. Array parameters or results would make asyncpg introspect the
# array types on every new connection (6 more round trips); comma-separated text costs the
# server a number-to-text conversion and us a split and an int() per id.
# MATERIALIZED resolves each sequence once; inlined, the lookup would run once per id. The ids
# come back in the order nextval handed them out: nextval is parallel-unsafe, so the plan is
# generate_series in a ProjectSet feeding the aggregate row by row (an ORDER BY g inside the
# aggregate would sort what is already sorted -- a quarter of the statement's server time).
# generate_series in the select list, not in FROM: no tuplestore materializes its rows first
# (half the statement's server time at 10,000 ids). The FILTER names g so that the aggregate
# belongs to the subquery, not to the outer query.
_PREFETCH_SQL = """
WITH s AS MATERIALIZED (
  SELECT j.ord, j.n, to_regclass(j.tbl)::oid::int8 AS oid,
    CASE WHEN j.n > 0
      THEN coalesce(j.seqname, pg_get_serial_sequence(j.tbl, j.col))::regclass END AS seq
  FROM ROWS FROM (json_to_recordset($1::text::json) AS (seqname text, tbl text, col text, n int))
    WITH ORDINALITY AS j(seqname, tbl, col, n, ord)
)
SELECT s.oid, (
  SELECT string_agg(int8send(nextval(s.seq)), ''::bytea) FILTER (WHERE g > 0)
  FROM (SELECT generate_series(1, s.n) AS g) AS gs
)
FROM s
ORDER BY s.ord
"""

_lock = threading.Lock()
_meta_cache: weakref.WeakKeyDictionary[Engine, dict[tuple[Any, ...], TableMeta]] = (
    weakref.WeakKeyDictionary()
)
_warned: set[tuple[Any, ...]] = set()


def effective_schema(schema: str | None, connection: Connection) -> str | None:
    stm = _sa.schema_translate_map(connection)
    if stm and schema in stm:
        return stm[schema]
    return schema


def qualified(connection: Connection, schema: str | None, name: str) -> str:
    prep = connection.dialect.identifier_preparer
    if schema:
        return f"{prep.quote_schema(schema)}.{prep.quote(name)}"
    return prep.quote(name)


def is_integer_column(col: Column[Any]) -> bool:
    try:
        return isinstance(col.type, Integer)
    except Exception:  # pragma: no cover - exotic types
        return False


def id_column_kind(table: Table, col: Column[Any]) -> str | None:
    """``sequence``/``identity``/``serial`` when ``col`` is database-generated from a
    sequence; ``None`` otherwise."""
    if not is_integer_column(col):
        return None
    if isinstance(col.default, SASequence):
        return "sequence"
    if col.identity is not None or isinstance(col.server_default, Identity):
        return "identity"
    if col.server_default is not None or col.default is not None:
        return None
    if table.autoincrement_column is col:
        return "serial"
    return None


def id_source(connection: Connection, table: Table, col: Column[Any]) -> IdSource:
    schema = effective_schema(table.schema, connection)
    tref = qualified(connection, schema, table.name)
    seq_ref = None
    if isinstance(col.default, SASequence):
        seq = col.default
        seq_schema = effective_schema(seq.schema, connection)
        seq_ref = qualified(connection, seq_schema, seq.name)
    return IdSource(tref, col.name, seq_ref)


def table_meta(
    connection: Connection, table: Table, id_col: Column[Any] | None, refresh: bool = False
) -> TableMeta:
    """Catalog facts for ``table`` under this connection's effective schema (cached; looked up
    again with ``refresh``)."""
    src = id_source(connection, table, id_col) if id_col is not None else None
    tref = qualified(connection, effective_schema(table.schema, connection), table.name)
    key = (tref, src.key if src else None)
    engine = connection.engine
    if not refresh:
        with _lock:
            cached = _meta_cache.get(engine, {}).get(key)
        if cached is not None:
            return cached
    casts = {c.name: t for c in table.c if (t := _sa.bind_cast_type(c, connection.dialect))}
    row = connection.exec_driver_sql(
        _LOOKUP_SQL,
        (tref, src.column if src else "", src.sequence_ref if src else None, json.dumps(casts)),
    ).one()
    oid, seq, priv, ident, names, types, type_oids, text_only, arrays, defaulted = row[:10]
    sequenced, triggers, rules, row_security, retyped, always, unique_cols, unique_any = row[10:18]
    from_str = row[18]
    id_reason = None
    if src is None:
        id_reason = "no database-generated integer primary key"
    elif seq is None:
        id_reason = (
            f"no sequence found for {tref}.{src.column} in the catalog "
            "(not SERIAL/IDENTITY and no Sequence on the Column)"
        )
    elif not priv:
        id_reason = f"no USAGE or UPDATE privilege on sequence {seq} for the current role"
        wkey = (str(engine.url), tref, "priv")
        if wkey not in _warned:
            _warned.add(wkey)
            warnings.warn(
                f"async_batch: {id_reason}; ids for {tref} are left to the native flush",
                RuntimeWarning,
                stacklevel=2,
            )
    meta = TableMeta(
        id_ok=id_reason is None,
        id_reason=id_reason,
        identity_always=ident == "a",
        oid=oid,
        column_types=dict(zip(names or (), types or (), strict=True)),
        column_oids=dict(zip(names or (), map(int, type_oids or ()), strict=True)),
        text_only_columns=frozenset(text_only or ()),
        array_columns=frozenset(arrays or ()),
        defaulted_columns=frozenset(defaulted or ()),
        sequenced_columns=frozenset(sequenced or ()),
        triggers=bool(triggers),
        rules=bool(rules),
        row_security=bool(row_security),
        retyped=tuple(tuple(item) for item in (json.loads(retyped) if retyped else ())),
        always_columns=frozenset(always or ()),
        unique_columns=frozenset(unique_cols or ()),
        unique_any=bool(unique_any),
        from_str_columns=frozenset(from_str or ()),
    )
    with _lock:
        _meta_cache.setdefault(engine, {})[key] = meta
    logger.debug("catalog lookup %s: %s", tref, meta)
    return meta


def prefetch(
    connection: Connection,
    requests: Sequence[tuple[IdSource, int]],
    check: Sequence[str] = (),
) -> tuple[list[list[int]], list[int | None]]:
    """Fetch ``n`` new values from each source in one round trip; values ascend per source
    in the order the server hands them out (never assumed contiguous). The same statement
    returns the OIDs the ``check`` table references resolve to right now (after those of
    the sources' tables), so cached lookups can be validated for free."""
    entries = [
        {"seqname": src.sequence_ref, "tbl": src.table_ref, "col": src.column, "n": n}
        for src, n in requests
    ]
    entries += [{"seqname": None, "tbl": tref, "col": "", "n": 0} for tref in check]
    if not entries:
        return [], []
    result = connection.exec_driver_sql(_PREFETCH_SQL, (json.dumps(entries),)).all()
    ids = [list(_unpack_ids(r[1])) if r[1] else [] for r in result[: len(requests)]]
    return ids, [r[0] for r in result]


def _unpack_ids(packed: bytes) -> tuple[int, ...]:
    """The ids of ``int8send`` values concatenated: 8-byte big-endian signed integers."""
    return struct.unpack(f">{len(packed) // 8}q", packed)


IdUndo = tuple[list[dict[str, Any]], str, list[dict[str, Any]]]
"""(instance dicts given ids, attribute key, those of them that held None before)"""


class StaleLookup(Exception):
    """Some ``expect``-ed table reference resolves to another table than the cached lookup."""

    def __init__(self, positions: list[int]) -> None:
        super().__init__(positions)
        self.positions = positions


def draw_ids(
    connection: Connection,
    wanted: Sequence[tuple[IdSource, Sequence[tuple[str, list[dict[str, Any]]]]]],
    expect: Sequence[tuple[str, int | None]] = (),
) -> list[IdUndo]:
    """Give new ids to instance dicts in one round trip: per source, its (attribute key,
    dicts) chunks in order, numbered in the order the sequence hands the values out.

    ``expect`` lists (table reference, OID of the cached lookup); if any now resolves to
    another OID, ``StaleLookup`` is raised before anything is assigned. Returns what undoes
    the assignment."""
    requests = [(src, sum(len(ds) for _key, ds in chunks)) for src, chunks in wanted]
    values, oids = prefetch(connection, requests, [tref for tref, _oid in expect])
    stale = [
        i
        for i, ((_tref, oid), now) in enumerate(zip(expect, oids[len(requests) :], strict=True))
        if now != oid
    ]
    if stale:
        raise StaleLookup(stale)
    undo: list[IdUndo] = []
    for (_src, chunks), ids in zip(wanted, values, strict=True):
        if len(ids) != sum(len(ds) for _key, ds in chunks):  # pragma: no cover - server
            raise RuntimeError("sequence prefetch returned the wrong number of ids")
        pos = 0
        for key, ds in chunks:
            # the objects had no id: the key was absent, or None (kept for the undo)
            held = list(map(operator.contains, ds, itertools.repeat(key)))
            undo.append((ds, key, list(itertools.compress(ds, held)) if any(held) else []))
            collections.deque(
                map(operator.setitem, ds, itertools.repeat(key), ids[pos : pos + len(ds)]), 0
            )
            pos += len(ds)
    return undo


def clear_cache() -> None:
    """Forget cached catalog lookups (after DDL that changes tables or sequences)."""
    with _lock:
        _meta_cache.clear()
        _warned.clear()

"""Relationship configurations beyond the zoo's, native vs every batching mode.

Dict and set collections, a view-only relationship beside a writable one, ``ordering_list``,
a composite foreign key, a self-referential many-to-many with explicit joins, an association
proxy that creates the link objects, one-to-one from either side, a delete-orphan child removed
before the flush, and ``post_update`` (which stays native, with its reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, ForeignKeyConstraint, MetaData, String, Table
from sqlalchemy.ext.associationproxy import AssociationProxy, association_proxy
from sqlalchemy.ext.orderinglist import ordering_list
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    attribute_keyed_dict,
    mapped_column,
    relationship,
    selectinload,
)
from support import Run, compare_modes, create_schema
from test_property import MODES


class Base(DeclarativeBase):
    metadata = MetaData()


class Folder(Base):
    __tablename__ = "rs_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    files: Mapped[dict[str, File]] = relationship(
        collection_class=attribute_keyed_dict("name"),
        back_populates="folder",
        cascade="all, delete-orphan",
    )
    tags: Mapped[set[FolderTag]] = relationship(collection_class=set, back_populates="folder")
    big_files: Mapped[list[File]] = relationship(
        viewonly=True, primaryjoin="and_(Folder.id == File.folder_id, File.size > 100)"
    )
    steps: Mapped[list[Step]] = relationship(
        order_by="Step.position", collection_class=ordering_list("position")
    )
    lamp: Mapped[Lamp | None] = relationship(back_populates="folder", uselist=False)


class File(Base):
    __tablename__ = "rs_file"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("rs_folder.id"))
    name: Mapped[str]
    # attribute and column names differ
    size: Mapped[int] = mapped_column("size_bytes", default=0)
    folder: Mapped[Folder | None] = relationship(back_populates="files")


class FolderTag(Base):
    __tablename__ = "rs_folder_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("rs_folder.id"))
    label: Mapped[str]
    folder: Mapped[Folder | None] = relationship(back_populates="tags")


class Step(Base):
    __tablename__ = "rs_step"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("rs_folder.id"))
    position: Mapped[int | None]
    text_: Mapped[str] = mapped_column("text")


class Lamp(Base):
    __tablename__ = "rs_lamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("rs_folder.id"), unique=True)
    folder: Mapped[Folder | None] = relationship(back_populates="lamp")


class Region(Base):
    __tablename__ = "rs_region"
    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    code: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str]
    shops: Mapped[list[Shop]] = relationship(back_populates="region")


class Shop(Base):
    __tablename__ = "rs_shop"
    __table_args__ = (
        ForeignKeyConstraint(["country", "region_code"], ["rs_region.country", "rs_region.code"]),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    country: Mapped[str | None] = mapped_column(String(2))
    region_code: Mapped[int | None]
    region: Mapped[Region | None] = relationship(back_populates="shops")


friendship = Table(
    "rs_friendship",
    Base.metadata,
    Column("a_id", ForeignKey("rs_person.id"), primary_key=True),
    Column("b_id", ForeignKey("rs_person.id"), primary_key=True),
)


class Person(Base):
    __tablename__ = "rs_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    friends: Mapped[list[Person]] = relationship(
        secondary=friendship,
        primaryjoin=lambda: Person.id == friendship.c.a_id,
        secondaryjoin=lambda: Person.id == friendship.c.b_id,
    )
    keyword_links: Mapped[list[KeywordLink]] = relationship(cascade="all, delete-orphan")
    keywords: AssociationProxy[list[str]] = association_proxy(
        "keyword_links", "word", creator=lambda w: KeywordLink(word=w)
    )


class KeywordLink(Base):
    __tablename__ = "rs_keyword_link"
    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("rs_person.id"))
    word: Mapped[str]


class Album(Base):
    __tablename__ = "rs_album"
    id: Mapped[int] = mapped_column(primary_key=True)
    photos: Mapped[list[Photo]] = relationship(foreign_keys="Photo.album_id")
    cover_id: Mapped[int | None] = mapped_column(
        ForeignKey("rs_photo.id", use_alter=True, name="rs_album_cover_fk")
    )
    cover: Mapped[Photo | None] = relationship(foreign_keys=[cover_id], post_update=True)


class Photo(Base):
    __tablename__ = "rs_photo"
    id: Mapped[int] = mapped_column(primary_key=True)
    album_id: Mapped[int | None] = mapped_column(ForeignKey("rs_album.id"))


Built = tuple[list[Any], list[Any]]


def folders(existing: Folder | None) -> Built:
    created: list[Any] = []
    top: list[Any] = []
    for i in range(5):
        f = Folder(name=f"f{i}")
        a, b = File(name="a", size=50 * i), File(name="b")
        f.files["a"] = a
        f.files["b"] = b
        t = FolderTag(label="x")
        f.tags.add(t)
        s1, s2 = Step(text_="one"), Step(text_="two")
        f.steps.append(s1)
        f.steps.append(s2)
        created += [f, a, b, t, s1, s2]
        top.append(f)
    return created, top


def existing_folder(existing: Folder | None) -> Built:
    """New files keyed into a persistent folder's dict collection, a new tag into its set."""
    assert existing is not None
    created: list[Any] = []
    for i in range(4):
        fl = File(name=f"new{i}", size=200 * i)
        existing.files[fl.name] = fl
        created.append(fl)
    t = FolderTag(label="late")
    existing.tags.add(t)
    created.append(t)
    return created, []


def one_to_one(existing: Folder | None) -> Built:
    created: list[Any] = []
    for i in range(4):
        f = Folder(name=f"o{i}")
        lamp = Lamp()
        if i % 2:
            f.lamp = lamp
        else:
            lamp.folder = f
        created += [f, lamp]
    return created, created[::2]


def regions(existing: Folder | None) -> Built:
    created: list[Any] = []
    top: list[Any] = []
    for i in range(4):
        r = Region(country="de", code=i, name=f"r{i}")
        shops = [Shop(), Shop()]
        r.shops.extend(shops)
        extra = Shop(region=r)
        created += [r, *shops, extra]
        top += [r, extra]
    return created, top


def people(existing: Folder | None) -> Built:
    ps = [Person(name=f"p{i}") for i in range(5)]
    for i, p in enumerate(ps):
        p.friends.append(ps[(i + 1) % 5])
        p.keywords.append(f"kw{i}")
        p.keywords.append("common")
    return ps + [k for p in ps for k in p.keyword_links], ps


def orphan(existing: Folder | None) -> Built:
    f = Folder(name="f")
    a, b = File(name="a"), File(name="b")
    f.files["a"] = a
    f.files["b"] = b
    del f.files["a"]  # a delete-orphan child removed before the flush
    return [f, a, b], [f]


def post_update(existing: Folder | None) -> Built:
    created: list[Any] = []
    for _ in range(4):
        album = Album()
        a, b = Photo(), Photo()
        album.photos += [a, b]
        album.cover = a
        created += [album, a, b]
    return created, created[::3]


CASES: dict[str, Callable[[Folder | None], Built]] = {
    "dict_set_viewonly_ordering": folders,
    "persistent_dict_and_set": existing_folder,
    "one_to_one": one_to_one,
    "composite_fk": regions,
    "self_m2m_association_proxy": people,
    "delete_orphan_removed": orphan,
    "post_update": post_update,
}
STAYS_NATIVE = {"post_update": "post_update"}


def workload(build: Callable[[Folder | None], Built]) -> Any:
    async def run_it(run: Run) -> None:
        s = run.session
        existing = await s.get(
            Folder, 1, options=[selectinload(Folder.files), selectinload(Folder.tags)]
        )
        created, top = build(existing)
        run.track(*created)
        s.add_all(top)
        await s.flush()
        run.snapshot("flush")
        await s.commit()
        run.snapshot("commit")

    return run_it


async def setup(session: Any) -> None:
    session.add(Folder(name="existing", files={"old": File(name="old")}))


@pytest.fixture
def shapes_dsn(database_dsn: str) -> str:
    create_schema(database_dsn, Base.metadata)
    return database_dsn


@pytest.mark.parametrize("case", list(CASES))
def test_relationship_shape_matches_native(shapes_dsn: str, case: str) -> None:
    _native, results = asyncio.run(
        compare_modes(shapes_dsn, workload(CASES[case]), MODES, metadata=Base.metadata, setup=setup)
    )
    for label, options, other in results:
        if options.get("small_flush") != 0:
            continue
        report = other.reports[0]
        assert report is not None, label
        if case in STAYS_NATIVE:
            assert not report.accelerated, (label, report.summary())
            assert any(STAYS_NATIVE[case] in f.reason for f in report.fallbacks), report.summary()
        else:
            assert report.accelerated, (label, report.summary())
            assert not report.native, (label, report.summary())

"""A zoo of mapped classes covering the shapes async_batch must reproduce exactly."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    Numeric,
    Sequence,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

_codes = itertools.count(1)


def next_code() -> str:
    """A context-free callable default; ``reset_codes()`` makes runs comparable."""
    return f"code-{next(_codes)}"


def reset_codes() -> None:
    global _codes, _tokens
    _codes = itertools.count(1)
    _tokens = itertools.count(1)


class Base(DeclarativeBase):
    metadata = MetaData()


book_tags = Table(
    "book_tags",
    Base.metadata,
    Column("book_id", ForeignKey("book.id"), primary_key=True),
    Column("tag_id", ForeignKey("tag.id"), primary_key=True),
)


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    nickname: Mapped[str | None] = mapped_column(String(20))
    score: Mapped[int] = mapped_column(default=0)
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("author.id"))
    title: Mapped[str] = mapped_column(Text)
    pages: Mapped[int | None]
    status: Mapped[str] = mapped_column(String(10), default=lambda: "draft")
    author: Mapped[Author | None] = relationship(back_populates="books")
    tags: Mapped[list[Tag]] = relationship(secondary=book_tags, back_populates="books")


class Tag(Base):
    __tablename__ = "tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    books: Mapped[list[Book]] = relationship(secondary=book_tags, back_populates="tags")


class Node(Base):
    __tablename__ = "node"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("node.id"))
    name: Mapped[str]
    children: Mapped[list[Node]] = relationship(back_populates="parent")
    parent: Mapped[Node | None] = relationship(back_populates="children", remote_side=[id])


class Employee(Base):
    __tablename__ = "employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    type: Mapped[str] = mapped_column(String(20))
    name: Mapped[str]
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Engineer(Employee):
    __tablename__ = "engineer"
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    lang: Mapped[str | None]
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class SeniorEngineer(Engineer):
    __tablename__ = "senior_engineer"
    senior_id: Mapped[int] = mapped_column(ForeignKey("engineer.id"), primary_key=True)
    mentor: Mapped[str | None]
    __mapper_args__ = {"polymorphic_identity": "senior"}


class Manager(Employee):
    __tablename__ = "manager"
    id: Mapped[int] = mapped_column(ForeignKey("employee.id"), primary_key=True)
    level: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Vehicle(Base):
    __tablename__ = "vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    wheels: Mapped[int] = mapped_column(default=4)
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    doors: Mapped[int | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    payload: Mapped[float | None] = mapped_column(nullable=True)
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Gadget(Base):
    """Server defaults, fetched eagerly (the default for RETURNING dialects)."""

    __tablename__ = "gadget"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    color: Mapped[str] = mapped_column(server_default=text("'red'"))
    qty: Mapped[int] = mapped_column(server_default=text("1"))


class LazyGadget(Base):
    """Server defaults that the native flush expires instead of fetching."""

    __tablename__ = "lazy_gadget"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    color: Mapped[str] = mapped_column(server_default=text("'blue'"))
    __mapper_args__ = {"eager_defaults": False}


class Widget(Base):
    __tablename__ = "widget"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str]
    size: Mapped[int] = mapped_column(default=10)
    code: Mapped[str] = mapped_column(default=next_code)
    price: Mapped[Any] = mapped_column(Numeric(10, 2), nullable=True)
    meta: Mapped[Any] = mapped_column(JSON, nullable=True)


class IdentItem(Base):
    __tablename__ = "ident_item"
    id: Mapped[int] = mapped_column(Identity(), primary_key=True)
    name: Mapped[str]


class SeqItem(Base):
    __tablename__ = "seq_item"
    id: Mapped[int] = mapped_column(Integer, Sequence("unrelated_numbers"), primary_key=True)
    name: Mapped[str]


class NoReturnItem(Base):
    __tablename__ = "noreturn_item"
    __table_args__ = {"implicit_returning": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    flag: Mapped[bool | None]


class Shelf(Base):
    """A one-to-many without a backref: the child's key comes only from the parent side."""

    __tablename__ = "shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str]
    items: Mapped[list[ShelfItem]] = relationship()


class ShelfItem(Base):
    __tablename__ = "shelf_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int | None] = mapped_column(ForeignKey("shelf.id"))
    title: Mapped[str]


class Desk(Base):
    """One-to-one (``uselist=False``) from the parent side, with a many-to-one backref."""

    __tablename__ = "desk"
    id: Mapped[int] = mapped_column(primary_key=True)
    room: Mapped[str]
    lamp: Mapped[Lamp | None] = relationship(back_populates="desk", uselist=False)
    drawer: Mapped[Drawer | None] = relationship(uselist=False)


class Lamp(Base):
    __tablename__ = "lamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    desk_id: Mapped[int | None] = mapped_column(ForeignKey("desk.id"), unique=True)
    watts: Mapped[int | None]
    desk: Mapped[Desk | None] = relationship(back_populates="lamp")


class Drawer(Base):
    """The other end of a one-to-one without a backref."""

    __tablename__ = "drawer"
    id: Mapped[int] = mapped_column(primary_key=True)
    desk_id: Mapped[int | None] = mapped_column(ForeignKey("desk.id"))
    label: Mapped[str]


class AlwaysItem(Base):
    """GENERATED ALWAYS AS IDENTITY: explicit ids need OVERRIDING SYSTEM VALUE."""

    __tablename__ = "always_item"
    id: Mapped[int] = mapped_column(Identity(always=True), primary_key=True)
    name: Mapped[str]


_tokens = itertools.count(1)


def next_token() -> str:
    return f"tok-{next(_tokens):05d}"


class Token(Base):
    """A string primary key from a Python callable default."""

    __tablename__ = "token"
    id: Mapped[str] = mapped_column(String(20), primary_key=True, default=next_token)
    label: Mapped[str]


class Membership(Base):
    """An association object whose composite primary key comes from many-to-one links."""

    __tablename__ = "membership"
    author_id: Mapped[int] = mapped_column(ForeignKey("author.id"), primary_key=True)
    tag_id: Mapped[int] = mapped_column(ForeignKey("tag.id"), primary_key=True)
    role: Mapped[str | None]
    author: Mapped[Author] = relationship()
    tag: Mapped[Tag] = relationship()


ALL_CLASSES = [
    Author,
    Book,
    Tag,
    Node,
    Employee,
    Engineer,
    SeniorEngineer,
    Manager,
    Vehicle,
    Car,
    Truck,
    Gadget,
    LazyGadget,
    Widget,
    IdentItem,
    SeqItem,
    NoReturnItem,
    Shelf,
    ShelfItem,
    Desk,
    Lamp,
    Drawer,
    AlwaysItem,
    Token,
    Membership,
]

EXPLICIT_SEQUENCES = ["unrelated_numbers"]

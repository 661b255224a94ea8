"""SQLAlchemy 2.x declarative models: DNA sequences, their annotations and samples.

``Sample`` is a joined-table inheritance hierarchy (``samples`` + ``dna_samples`` /
``rna_samples``), so one import request writes five tables.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Sequence(Base):
    """A DNA sequence; ``name`` is unique."""

    __tablename__ = "sequences"

    id: Mapped[int] = mapped_column(primary_key=True)  # SERIAL
    name: Mapped[str] = mapped_column(String(200), unique=True)
    bases: Mapped[str] = mapped_column(Text)

    annotations: Mapped[list[Annotation]] = relationship(
        back_populates="sequence", cascade="all, delete-orphan", order_by="Annotation.id"
    )
    samples: Mapped[list[Sample]] = relationship(
        back_populates="sequence", cascade="all, delete-orphan", order_by="Sample.id"
    )


class Annotation(Base):
    """A labelled feature on ``[start, end)`` of a sequence."""

    __tablename__ = "annotations"
    __table_args__ = (CheckConstraint('start >= 0 AND start <= "end"', name="range_ok"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sequence_id: Mapped[int] = mapped_column(
        ForeignKey("sequences.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str] = mapped_column(String(100))
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)

    sequence: Mapped[Sequence] = relationship(back_populates="annotations")


class Sample(Base):
    """A physical sample a sequence was read from (joined inheritance base)."""

    __tablename__ = "samples"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    sequence_id: Mapped[int] = mapped_column(
        ForeignKey("sequences.id", ondelete="CASCADE"), index=True
    )

    sequence: Mapped[Sequence] = relationship(back_populates="samples")

    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "sample"}


class DnaSample(Sample):
    __tablename__ = "dna_samples"

    id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    concentration_ng_ul: Mapped[float] = mapped_column(Float)

    # "inline": loading a Sample joins the subclass tables, so no lazy load is ever needed
    # (lazy loads cannot happen implicitly under asyncio).
    __mapper_args__ = {"polymorphic_identity": "dna", "polymorphic_load": "inline"}


class RnaSample(Sample):
    __tablename__ = "rna_samples"

    id: Mapped[int] = mapped_column(ForeignKey("samples.id", ondelete="CASCADE"), primary_key=True)
    rin: Mapped[float] = mapped_column(Float)

    __mapper_args__ = {"polymorphic_identity": "rna", "polymorphic_load": "inline"}

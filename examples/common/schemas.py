"""Request and response bodies (pydantic v2)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnnotationIn(_Input):
    label: str = Field(min_length=1, max_length=100)
    start: int = Field(ge=0)
    end: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> AnnotationIn:
        if self.end < self.start:
            raise ValueError(f"annotation end ({self.end}) is before its start ({self.start})")
        return self


class DnaSampleIn(_Input):
    kind: Literal["dna"]
    concentration_ng_ul: float = Field(gt=0)


class RnaSampleIn(_Input):
    kind: Literal["rna"]
    rin: float = Field(ge=1, le=10)


SampleIn = Annotated[DnaSampleIn | RnaSampleIn, Field(discriminator="kind")]


class SequenceIn(_Input):
    name: str = Field(min_length=1, max_length=200)
    bases: str = Field(pattern=r"^[ACGTN]*$")
    annotations: list[AnnotationIn] = Field(default_factory=list)
    samples: list[SampleIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _annotations_inside(self) -> SequenceIn:
        for i, ann in enumerate(self.annotations):
            if ann.end > len(self.bases):
                raise ValueError(
                    f"annotation {i} ({ann.label!r}) ends at {ann.end}, past the end of the "
                    f"{len(self.bases)} bases"
                )
        return self


SequencesIn = TypeAdapter(list[SequenceIn])
"""The POST /sequences body: a JSON array of sequences."""


class _Output(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class AnnotationOut(_Output):
    id: int
    label: str
    start: int
    end: int


class DnaSampleOut(_Output):
    id: int
    kind: Literal["dna"]
    concentration_ng_ul: float


class RnaSampleOut(_Output):
    id: int
    kind: Literal["rna"]
    rin: float


class SequenceOut(_Output):
    id: int
    name: str
    bases: str
    annotations: list[AnnotationOut]
    samples: list[Annotated[DnaSampleOut | RnaSampleOut, Field(discriminator="kind")]]


class ImportResult(BaseModel):
    ids: list[int]
    """The new sequences' ids, in the order of the request's array."""


class ErrorOut(BaseModel):
    detail: str

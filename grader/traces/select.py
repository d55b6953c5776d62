"""Span selectors, in the spirit of Tracetest's `span[service.name="api" kind="server"]`.

A `Sel` is a conjunction of filters: service, name (exact, or a glob when it has * ? or [),
kind (one or several), status, and attributes (a value to equal, `ANY` for "present", or a
predicate). Its `str()` is how evidence names what was looked for. A `Step` is a selector that is
one link of a span chain (see checks.check_connected_traces): it says whether it may join the
previous step through a span link as well as through parentage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping

from ..otlp.spans import Span


class _Any:
    def __repr__(self) -> str:
        return "*"


ANY = _Any()  # an attribute that must be present, whatever its value
_GLOB = set("*?[")


def _text_matches(pattern: str, text: str) -> bool:
    return fnmatchcase(text, pattern) if _GLOB & set(pattern) else text == pattern


@dataclass(frozen=True)
class Sel:
    service: str | None = None
    name: str | None = None
    kind: str | tuple[str, ...] | None = None
    status: str | None = None  # "OK", "ERROR", "UNSET"
    attrs: Mapping[str, Any] = field(default_factory=dict)  # key -> value | ANY | predicate(value) -> bool

    def __hash__(self) -> int:
        return hash(str(self))

    def matches(self, span: Span) -> bool:
        if self.service is not None and not _text_matches(self.service, span.service):
            return False
        if self.name is not None and not _text_matches(self.name, span.name):
            return False
        if self.kind is not None and span.kind not in ((self.kind,) if isinstance(self.kind, str) else self.kind):
            return False
        if self.status is not None and span.status.get("code") != self.status:
            return False
        for attr, expected in self.attrs.items():
            if attr not in span.attributes:
                return False
            actual = span.attributes[attr]
            if expected is ANY:
                continue
            if callable(expected) and not isinstance(expected, type):
                if not expected(actual):
                    return False
            elif actual != expected:
                return False
        return True

    def __call__(self, spans: Iterable[Span]) -> list[Span]:
        return [s for s in spans if self.matches(s)]

    select = __call__

    def __str__(self) -> str:
        parts = []
        if self.service is not None:
            parts.append(f"service={self.service!r}")
        if self.kind is not None:
            parts.append(f"kind={self.kind if isinstance(self.kind, str) else '|'.join(self.kind)}")
        if self.name is not None:
            parts.append(f"name={self.name!r}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        for attr, expected in self.attrs.items():
            shown = "*" if expected is ANY else ("<predicate>" if callable(expected) else repr(expected))
            parts.append(f"{attr}={shown}")
        return f"span[{' '.join(parts)}]"


@dataclass(frozen=True)
class Step(Sel):
    """One link of a chain. `via_link`: may it join the previous step by a span link instead of
    by parentage? None means "yes for CONSUMER steps": the messaging conventions let a consumer
    link to the producer's span (mandatory when one receive/process span covers a batch of
    records from different traces), and parentage is optional there."""

    via_link: bool | None = None

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def joins_by_link(self) -> bool:
        if self.via_link is not None:
            return self.via_link
        kinds = (self.kind,) if isinstance(self.kind, str) else (self.kind or ())
        return "CONSUMER" in kinds


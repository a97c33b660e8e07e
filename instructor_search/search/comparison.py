"""Two rankings of one query under two instructions, and how each hit of B moved against A
(what :meth:`~instructor_search.search.retriever.Retriever.compare` returns)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .retriever import Hit


@dataclass(frozen=True)
class Movement:
    """Where a hit of ranking B stood in ranking A: ``change`` is new, up, down or same."""

    hit: Hit
    change: str
    previous_rank: int | None

    @property
    def delta(self) -> int:
        """Positions moved up (positive) or down (negative); 0 when same or new."""
        return 0 if self.previous_rank is None else self.previous_rank - self.hit.rank

    @property
    def label(self) -> str:
        """``"new"``, ``"up 3"``, ``"down 2"`` or ``"same"``."""
        if self.change in ("new", "same"):
            return self.change
        return f"{self.change} {abs(self.delta)}"


@dataclass
class Comparison:
    """Two rankings of one query under two instructions, and how B moved against A."""

    query: str
    instruction_a: str
    instruction_b: str
    hits_a: list[Hit]
    hits_b: list[Hit]
    movements: list[Movement]  # one per hit of B, in B's order
    dropped: list[Hit]  # hits of A that are not among B's


def compared(
    query: str,
    instructions: tuple[str, str],
    hits_a: Sequence[Hit],
    hits_b: Sequence[Hit],
    by_document: bool,
) -> Comparison:
    """How each of ``hits_b`` moved against ``hits_a``, matched by chunk (by document when
    ``by_document``)."""

    def key(hit: Hit) -> Any:
        return hit.doc_id if by_document else hit.chunk_id

    rank_a = {key(h): h.rank for h in hits_a}
    movements = []
    for hit in hits_b:
        before = rank_a.get(key(hit))
        change = "new" if before is None else _change(before, hit.rank)
        movements.append(Movement(hit, change, before))
    in_b = {key(h) for h in hits_b}
    dropped = [h for h in hits_a if key(h) not in in_b]
    return Comparison(query, *instructions, list(hits_a), list(hits_b), movements, dropped)


def _change(before: int, now: int) -> str:
    return "up" if before > now else "down" if before < now else "same"

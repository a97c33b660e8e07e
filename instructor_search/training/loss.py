"""INSTRUCTOR's contrastive loss: each query against its positive, the other positives of the
batch (in-batch negatives) and every hard negative of the batch, cosine similarity over a
temperature, cross-entropy on the positive.

A candidate labelled relevant to a query (the same document as another example's positive,
or another positive of the same query) is masked out of that query's row, never pushed away.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from .data import Example


def candidate_mask(examples: Sequence[Example]) -> torch.Tensor:
    """``(n, n + negatives)`` booleans: True where a candidate may score against the query.

    Candidates are the batch's positives in order, then every example's hard negatives.
    """
    import torch

    keys = [e.positive_key for e in examples] + [k for e in examples for k in e.negative_keys]
    allowed = torch.ones((len(examples), len(keys)), dtype=torch.bool)
    for row, example in enumerate(examples):
        for column, key in enumerate(keys):
            if column != row and key in example.relevant | {example.positive_key}:
                allowed[row, column] = False
    return allowed


def contrastive_loss(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    temperature: float,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of ``cos(query_i, candidate_j) / temperature`` with the target
    ``j = i`` (query ``i``'s positive is candidate ``i``); ``allowed`` masks candidates out."""
    import torch

    scores = (
        torch.nn.functional.normalize(queries, dim=-1)
        @ torch.nn.functional.normalize(candidates, dim=-1).T
    ) / temperature
    if allowed is not None:
        scores = scores.masked_fill(~allowed.to(scores.device), torch.finfo(scores.dtype).min)
    target = torch.arange(queries.shape[0], device=scores.device)
    return torch.nn.functional.cross_entropy(scores, target)

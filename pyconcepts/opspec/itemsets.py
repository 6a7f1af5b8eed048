"""Result types of the itemset ops and :func:`association_rules`, which has no kernel: this one
implementation serves :mod:`pyconcepts.ops.itemsets` and its twin."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations
from typing import Optional

import numpy as np

Itemset = tuple[int, ...]


@dataclass(frozen=True)
class Rule:
    """An association rule ``antecedent -> consequent``.

    ``count``: transactions containing both sides; ``support`` = count / n; ``confidence`` =
    count / count(antecedent); ``lift`` = confidence / (count(consequent) / n).
    """

    antecedent: Itemset
    consequent: Itemset
    count: int
    support: float
    confidence: float
    lift: float

    @property
    def score(self) -> float:
        """support x confidence: the seed's ranking score for rules."""
        return self.support * self.confidence


def association_rules(
    itemsets: Iterable[tuple[Iterable[int], int]],
    min_confidence: float,
    n_transactions: int,
    *,
    consequents: Optional[Iterable[int]] = None,
    min_lift: Optional[float] = None,
) -> list[Rule]:
    """Association rules from frequent itemsets (as returned by :func:`frequent_itemsets`).

    Every split of every itemset ``X`` (``len(X) >= 2``) into a non-empty antecedent ``A`` and
    consequent ``B = X - A`` with ``confidence >= min_confidence`` (and ``lift >= min_lift``) is a
    rule. With ``consequents`` (e.g. the class items) rules take the constrained form of the
    pattern-mining seed: the consequent is exactly one of those items and the antecedent contains
    none of them (filters -> class). Every subset of a listed itemset must be listed too (true for
    the output of ``frequent_itemsets``); a missing one raises ValueError.

    Returns rules sorted by descending support x confidence (the seed's score), then by
    antecedent and consequent.
    """
    if isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float)):
        raise TypeError(
            f"min_confidence: expected a float in [0, 1], got {type(min_confidence).__name__}"
        )
    if not 0.0 <= float(min_confidence) <= 1.0:
        raise ValueError(f"min_confidence: expected a float in [0, 1], got {min_confidence}")
    if isinstance(n_transactions, bool) or not isinstance(n_transactions, (int, np.integer)):
        raise TypeError(
            f"n_transactions: expected an int >= 1, got {type(n_transactions).__name__}"
        )
    if n_transactions < 1:
        raise ValueError(f"n_transactions: expected an int >= 1, got {n_transactions}")
    support = {frozenset(items): int(count) for items, count in itemsets}
    targets = None if consequents is None else frozenset(int(c) for c in consequents)

    def count_of(s: frozenset[int], whole: frozenset[int]) -> int:
        if s not in support:
            raise ValueError(
                f"itemsets: subset {tuple(sorted(s))} of {tuple(sorted(whole))} is missing; pass "
                "a downward-closed collection such as the output of frequent_itemsets"
            )
        return support[s]

    rules = []
    n = float(n_transactions)
    for whole, count in support.items():
        if len(whole) < 2:
            continue
        if targets is None:
            splits = [
                frozenset(b) for k in range(1, len(whole)) for b in combinations(sorted(whole), k)
            ]
        else:
            heads = whole & targets
            splits = [heads] if len(heads) == 1 else []
        for head in splits:
            body = whole - head
            confidence = count / count_of(body, whole)
            lift = confidence * n / count_of(head, whole)
            if confidence < min_confidence or (min_lift is not None and lift < min_lift):
                continue
            rules.append(
                Rule(tuple(sorted(body)), tuple(sorted(head)), count, count / n, confidence, lift)
            )
    rules.sort(key=lambda r: (-r.score, r.antecedent, r.consequent))
    return rules

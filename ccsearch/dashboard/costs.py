"""Each block group's MADDs split into its convolutions, CondConv kernel mixing and routing.

``count_madds`` reports mixing and routing for the whole model; the breakdown panel needs
them per group.  ``madds_parts`` has them, from the same fvcore counts and convention,
traced once per process per distinct group.
"""

from __future__ import annotations

from typing import NamedTuple

from ccsearch.arch import ArchSpec
from ccsearch.madds import madds_parts, moe_equivalent_madds


class GroupCost(NamedTuple):
    convolutions: int  # what the group costs as static convolutions (CondConv runs one too)
    mixing: int  # CondConv's per-example kernel mixing
    routing: int  # the routing FCs


def group_costs(spec: ArchSpec, convention: str = "paper") -> list[GroupCost]:
    """One ``GroupCost`` per block group, at 224px; they add up to its ``count_madds``."""
    _stem, *groups, _tail = (entry for _, entry in madds_parts(spec, 224, convention))
    return [GroupCost(e["madds"] - e["mixing"] - e["routing"], e["mixing"], e["routing"])
            for e in groups]


def moe_madds(spec: ArchSpec, convention: str = "paper") -> int:
    """The same network with each CondConv layer run as E separate convolutions."""
    return moe_equivalent_madds(spec, 224, convention)

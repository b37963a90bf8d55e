"""Proposals: which organizations to move where so that every Cell is within the policy's band.

Pure and deterministic (no I/O, no clock, ties broken by name): the same load and policy give
the same proposal. The load of a Cell is the sum of its organizations' estimated bytes (what a
move can shift; cluster-wide and Cell-local rows are the same everywhere or cannot move).

The greedy step moves one organization from a heavier Cell ``d`` to a lighter Cell ``r`` and is
taken only when the organization is smaller than the gap ``load(d) - load(r)``: both new loads
then lie strictly inside ``[load(r), load(d)]``, so the spread (max - min) never grows and the
sum of squares strictly falls (the loop ends). Among such organizations it takes the smallest
that brings the heavier Cell into the band without pushing the lighter one out, else the
largest within the ideal transfer (both towards the mean), else the smallest that fits: few
bytes moved. A draining Cell gives
every organization that is not pinned to the lightest Cell that takes new ones, first.

Moves are grouped in waves that respect the concurrency limits: in one wave no Cell is in more
than ``max_moves_per_cell`` moves and there are at most ``max_moves_total`` moves.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from pydantic import BaseModel, Field

from orgmove.rebalance.policy import RebalancePolicy


class OrgLoad(BaseModel):
    org: str
    cell: str
    bytes: int
    rows: int = 0


class CellLoad(BaseModel):
    cell: str
    org_bytes: int  # sum of its organizations' estimated bytes: the balanced quantity
    org_rows: int = 0
    total_bytes: int = 0  # everything in the Cell's database (pg_database_size)
    total_rows: int = 0  # reltuples of every table
    orgs: int = 0
    writes_per_s: float | None = None  # pg_stat_user_tables deltas, when sampled


class LoadReport(BaseModel):
    cells: list[CellLoad]
    orgs: list[OrgLoad]

    def loads(self) -> dict[str, int]:
        return {c.cell: c.org_bytes for c in self.cells}


class ProposedMove(BaseModel):
    org: str
    from_cell: str
    to_cell: str
    estimated_bytes: int
    estimated_s: float
    wave: int
    reason: str  # "drain" or "balance"


class Proposal(BaseModel):
    id: str = ""
    band: float
    mean_bytes: float
    before: dict[str, int]
    after: dict[str, int]
    moves: list[ProposedMove] = Field(default_factory=list)
    within_band: bool
    unmovable: list[str] = Field(default_factory=list)  # pinned orgs on a draining Cell
    policy: RebalancePolicy

    def content_id(self) -> str:
        doc = self.model_dump(mode="json", exclude={"id"})
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def band_limits(
    loads: Mapping[str, int], band: float, exclude: AbstractSet[str] = frozenset()
) -> tuple[float, float, float]:
    """(mean, lower, upper) of the Cells not in ``exclude`` (draining Cells hold nothing after)."""
    active = [v for c, v in loads.items() if c not in exclude]
    if not active:
        return 0.0, 0.0, 0.0
    mean = sum(loads.values()) / len(active)
    return mean, mean * (1 - band), mean * (1 + band)


def spread(loads: Mapping[str, int], exclude: AbstractSet[str] = frozenset()) -> int:
    values = [v for c, v in loads.items() if c not in exclude]
    return max(values) - min(values) if values else 0


def within(loads: Mapping[str, int], band: float, exclude: AbstractSet[str] = frozenset()) -> bool:
    _, lower, upper = band_limits(loads, band, exclude)
    return all(lower <= v <= upper for c, v in loads.items() if c not in exclude)


def propose(report: LoadReport, policy: RebalancePolicy) -> Proposal:
    loads = {c.cell: c.org_bytes for c in report.cells}
    before = dict(sorted(loads.items()))
    draining = set(policy.drain) & set(loads)
    receivers = sorted(c for c in loads if c not in draining and c not in set(policy.no_new_orgs))
    pinned = set(policy.pinned)
    by_cell: dict[str, list[OrgLoad]] = {c: [] for c in loads}
    for o in sorted(report.orgs, key=lambda o: (-o.bytes, o.org)):
        by_cell.setdefault(o.cell, []).append(o)
    moved: set[str] = set()
    moves: list[tuple[OrgLoad, str, str]] = []
    unmovable: list[str] = []

    def move(o: OrgLoad, dst: str, reason: str) -> None:
        loads[o.cell] -= o.bytes
        loads[dst] += o.bytes
        moved.add(o.org)
        moves.append((o, dst, reason))

    # 1. Drain: every organization leaves, largest first, to the lightest Cell taking new ones.
    for cell in sorted(draining):
        for o in by_cell[cell]:
            if o.org in pinned:
                unmovable.append(o.org)
                continue
            if not receivers or len(moves) >= policy.max_moves_per_proposal:
                unmovable.append(o.org)
                continue
            dst = min(receivers, key=lambda c: (loads[c], c))
            move(o, dst, "drain")

    # 2. Balance the Cells that stay.
    while len(moves) < policy.max_moves_per_proposal and not within(loads, policy.band, draining):
        step = _best_step(loads, by_cell, receivers, draining, pinned | moved, policy.band)
        if step is None:
            break
        move(*step, "balance")

    mean, _, _ = band_limits(loads, policy.band, draining)
    proposal = Proposal(
        band=policy.band, mean_bytes=round(mean, 1), before=before, after=dict(sorted(loads.items())),
        moves=[ProposedMove(org=o.org, from_cell=o.cell, to_cell=dst, estimated_bytes=o.bytes,
                            estimated_s=round(o.bytes / policy.copy_bytes_per_s, 3), wave=0,
                            reason=reason) for o, dst, reason in moves],
        within_band=within(loads, policy.band, draining), unmovable=sorted(unmovable), policy=policy,
    )
    assign_waves(proposal.moves, policy.max_moves_per_cell, policy.max_moves_total)
    proposal.id = proposal.content_id()
    return proposal


def _best_step(
    loads: dict[str, int], by_cell: Mapping[str, list[OrgLoad]], receivers: list[str],
    draining: set[str], frozen: set[str], band: float,
) -> tuple[OrgLoad, str] | None:
    mean, lower, upper = band_limits(loads, band, draining)
    donors = sorted((c for c in loads if c not in draining), key=lambda c: (-loads[c], c))
    targets = sorted(receivers, key=lambda c: (loads[c], c))
    for d in donors:
        for r in targets:
            if r == d or not (loads[d] > upper or loads[r] < lower):
                continue
            gap = loads[d] - loads[r]
            fits = [o for o in by_cell.get(d, []) if o.org not in frozen and 0 < o.bytes < gap]
            if not fits:
                continue
            into_band = [o for o in fits if loads[d] - o.bytes <= upper and loads[r] + o.bytes <= upper]
            if into_band:
                return min(into_band, key=lambda o: (o.bytes, o.org)), r
            # No single organization ends the donor's excess: the largest one within the ideal
            # transfer (both Cells towards the mean), else the smallest that still helps.
            ideal = min(loads[d] - mean, mean - loads[r])
            modest = [o for o in fits if o.bytes <= ideal]
            if modest:
                return max(modest, key=lambda o: (o.bytes, _neg(o.org))), r
            return min(fits, key=lambda o: (o.bytes, o.org)), r
    return None


def _neg(name: str) -> tuple[int, ...]:
    """Reverse order of a name, for tie-breaking in max()."""
    return tuple(-ord(ch) for ch in name)


def assign_waves(moves: list[ProposedMove], per_cell: int, total: int) -> None:
    """First-fit: each move, in order, into the first wave where both its Cells and the total
    have room."""
    waves: list[dict[str, int]] = []
    sizes: list[int] = []
    for m in moves:
        for i, used in enumerate(waves):
            if sizes[i] < total and used.get(m.from_cell, 0) < per_cell and used.get(m.to_cell, 0) < per_cell:
                break
        else:
            waves.append({})
            sizes.append(0)
            i = len(waves) - 1
        waves[i][m.from_cell] = waves[i].get(m.from_cell, 0) + 1
        waves[i][m.to_cell] = waves[i].get(m.to_cell, 0) + 1
        sizes[i] += 1
        m.wave = i

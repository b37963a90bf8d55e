"""The fixture's organization layout: table classes, scales, per-organization shapes and row
counts, and which Cell an organization is seeded into. Pure (no database): :mod:`orgmove.sandbox.seed`
runs the SQL that writes these counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from orgmove.errors import BadInput

# Tables of the fixture schema by class (what the planner is expected to find).
CLUSTER_WIDE_TABLES = ("users", "lfs_objects")
CELL_LOCAL_TABLES = ("application_settings", "schema_migrations")
ORG_TABLES = (
    "organizations",
    "namespaces",
    "routes",
    "projects",
    "project_statistics",
    "labels",
    "members",
    "project_authorizations",
    "issues",
    "merge_requests",
    "notes",
    "label_links",
    "ci_pipelines",
    "p_ci_builds",
    "ci_job_artifacts",
    "lfs_objects_projects",
    "web_hook_logs_archive",
)
ALL_TABLES = CELL_LOCAL_TABLES + CLUSTER_WIDE_TABLES + ORG_TABLES

# ------------------------------------------------------------------------------------------------
# Scales and per-organization shapes


@dataclass(frozen=True)
class Scale:
    """``factor`` multiplies :data:`BASE_COUNTS` (the row counts of org 1 at factor 1)."""

    name: str
    factor: float
    users: int
    lfs_objects: int


SCALES: dict[str, Scale] = {
    "tiny": Scale("tiny", 0.03, users=40, lfs_objects=10),
    "small": Scale("small", 1.0, users=300, lfs_objects=100),
    "medium": Scale("medium", 10.0, users=3_000, lfs_objects=1_000),
    "large": Scale("large", 100.0, users=10_000, lfs_objects=5_000),
}

# Rows of org 1 at factor 1 ("small": ~11,000 rows; "large": ~1.1 million).
BASE_COUNTS: dict[str, int] = {
    "groups": 3,
    "subgroups": 5,
    "user_namespaces": 4,
    "projects": 20,
    "project_labels": 100,
    "group_labels": 20,
    "members": 50,
    "project_authorizations": 100,
    "issues": 2_000,
    "merge_requests": 600,
    "notes": 4_000,
    "label_links": 1_000,
    "ci_pipelines": 400,
    "p_ci_builds": 2_000,
    "ci_job_artifacts": 400,
    "lfs_objects_projects": 50,
    "web_hook_logs_archive": 200,
}

MINIMUM_COUNTS: dict[str, int] = {
    "groups": 1,
    "subgroups": 1,
    "user_namespaces": 1,
    "projects": 3,
    "project_labels": 3,
    "group_labels": 1,
    "members": 2,
    "project_authorizations": 3,
    "issues": 5,
    "merge_requests": 3,
    "notes": 5,
    "label_links": 3,
    "ci_pipelines": 2,
    "p_ci_builds": 4,
    "ci_job_artifacts": 2,
    "lfs_objects_projects": 2,
    "web_hook_logs_archive": 4,
}

_CI = ("ci_pipelines", "p_ci_builds", "ci_job_artifacts")
_WORK = ("issues", "notes", "label_links")


@dataclass(frozen=True)
class Shape:
    size: float
    multipliers: dict[str, float] = field(default_factory=dict)
    deep_groups: bool = False  # subgroups nest in chains rather than fan out


def org_shape(org_id: int) -> Shape:
    """Organizations differ in size and shape; org 1 is the biggest."""
    if org_id == 1:
        return Shape(1.0)
    if org_id == 2:  # issue-heavy, little CI, deep group hierarchy
        mult = {t: 1.6 for t in _WORK} | {t: 0.2 for t in _CI} | {"subgroups": 3.0}
        return Shape(0.45, mult, deep_groups=True)
    if org_id == 3:  # CI-heavy, few issues
        mult = {t: 2.5 for t in _CI} | {t: 0.4 for t in _WORK}
        return Shape(0.3, mult)
    return Shape(0.1 + 0.05 * (org_id % 4), deep_groups=org_id % 2 == 0)


@dataclass(frozen=True)
class OrgCounts:
    org_id: int
    counts: dict[str, int]
    deep_groups: bool

    def __getitem__(self, key: str) -> int:
        return self.counts[key]


def org_counts(org_id: int, scale: str, orgs: int) -> OrgCounts:
    sc = scale_named(scale)
    shape = org_shape(org_id)
    counts: dict[str, int] = {}
    for key, base in BASE_COUNTS.items():
        value = round(base * sc.factor * shape.size * shape.multipliers.get(key, 1.0))
        counts[key] = max(MINIMUM_COUNTS[key], value)
    # Invariants the generator relies on.
    available_users = (sc.users - org_id) // orgs + 1
    counts["user_namespaces"] = max(0, min(counts["user_namespaces"], available_users))
    counts["project_labels"] = max(counts["project_labels"], counts["projects"])
    per_project = max(1, min(sc.users, counts["project_authorizations"] // counts["projects"]))
    counts["project_authorizations"] = per_project * counts["projects"]
    counts["p_ci_builds"] = max(counts["p_ci_builds"], counts["ci_pipelines"])
    counts["ci_job_artifacts"] = min(counts["ci_job_artifacts"], counts["p_ci_builds"])
    counts["cross_org_merge_requests"] = max(3, round(20 * sc.factor))
    return OrgCounts(org_id, counts, shape.deep_groups)


def scale_named(scale: str) -> Scale:
    try:
        return SCALES[scale]
    except KeyError:
        raise BadInput(
            f"unknown scale {scale!r}",
            fix="use one of: " + ", ".join(SCALES),
        ) from None


# ------------------------------------------------------------------------------------------------
# Cells


def cell_number(cell_name: str) -> int:
    """The number of a cell named like ``cell-2`` (its id range starts at number * 10**12)."""
    m = re.fullmatch(r".*?(\d+)", cell_name)
    if not m or int(m.group(1)) < 1:
        raise BadInput(
            f"cell name {cell_name!r} does not end in a cell number",
            fix="name cells cell-1, cell-2, ...: the number selects the cell's id range",
        )
    return int(m.group(1))


def org_home(org_id: int, cell_names: Sequence[str]) -> str:
    """The cell an organization is seeded into: org 1 -> cell-1, org 2 -> cell-2, org 3 -> cell-1,
    ... (round robin over the cells ordered by number)."""
    if not cell_names:
        raise BadInput("no cells to seed", fix="configure at least one cell")
    if org_id < 1:
        raise BadInput(f"organization id {org_id} is not positive", fix="use ids 1..N")
    ordered = sorted(cell_names, key=lambda n: (cell_number(n), n))
    return ordered[(org_id - 1) % len(ordered)]

"""The project's exception tree, rooted at :class:`OrgmoveError`.

Every error an operator can see carries a stable ``code`` (for ``--json``), the process exit code,
a message naming the problem and a ``fix`` saying what to do. Driver errors are translated into this
tree at one boundary (:mod:`orgmove.db`); the CLI prints ``str(error)`` in one paragraph and shows
a traceback only with ``--debug``.

Exit codes (docs/architecture.md "Errors and exit codes"): 0 done; 1 failed after retries; 2 bad
input or failed pre-flight (nothing changed); 3 verification mismatch.

Whether an error is worth retrying is its own property, ``retryable`` (a class default that one
instance may override), not a consequence of its place in the tree: the retry helper
(:func:`orgmove.db.is_transient`, used by :mod:`orgmove.retry`) asks the error.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MISMATCH = 3


class OrgmoveError(Exception):
    code = "error"
    exit_code = EXIT_FAILED
    retryable = False

    def __init__(self, message: str, *, fix: str = "", details: dict[str, Any] | None = None,
                 retryable: bool | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix
        self.details = details or {}
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        text = self.message.rstrip(".") + "."
        if self.fix:
            text += " Fix: " + self.fix.rstrip(".") + "."
        return text

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.code, "message": self.message, "fix": self.fix}
        if self.details:
            doc["details"] = self.details
        return doc


# --- exit 2: bad input or failed pre-flight; nothing was changed -------------------------------


class BadInput(OrgmoveError):
    code = "bad_input"
    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    code = "config_error"


class CertificateRejected(ConfigError):
    """The TLS handshake refused the server's certificate (another CA, another host name). A
    setting to correct, never worth retrying: the next attempt meets the same certificate."""

    code = "tls_certificate_rejected"


class EnvironmentProblem(BadInput):
    """The machine lacks something orgmove needs (server binaries, a free port, a directory)."""

    code = "environment"


class CellUnreachable(BadInput):
    """Exit 2 when a command fails on it (nothing was changed), and yet retried: a Cell unreachable
    *now* (a restart, a failover) is worth retrying once work is under way."""

    code = "cell_unreachable"
    retryable = True


class AuthenticationFailed(BadInput):
    code = "authentication_failed"


class UnknownOrganization(BadInput):
    code = "unknown_organization"


class PreflightFailed(BadInput):
    code = "preflight_failed"


class SchemaDrift(BadInput):
    code = "schema_drift"


class StalePlan(BadInput):
    code = "stale_plan"


class PlanError(BadInput):
    code = "plan_error"


class RulesError(BadInput):
    code = "rules_error"


class UnclassifiedTables(PlanError):
    """One short paragraph (what and how to fix), then the tables one per line: the first
    ``SHOWN`` and a count of the rest, so a schema with hundreds of new tables stays readable."""

    code = "unclassified_tables"
    SHOWN = 10

    def __init__(self, message: str, *, tables: list[str], fix: str = "",
                 details: dict[str, Any] | None = None):
        super().__init__(message, fix=fix, details=details)
        self.tables = tables

    def __str__(self) -> str:
        lines = [super().__str__()]
        lines += [f"  {t}" for t in self.tables[:self.SHOWN]]
        if len(self.tables) > self.SHOWN:
            lines.append(f"  ... and {len(self.tables) - self.SHOWN} more (all of them: --suggest-rules)")
        return "\n".join(lines)


class TargetConflict(PreflightFailed):
    code = "target_conflict"


class OutsideReferences(PreflightFailed):
    """Rows of the organization reference rows that the move would leave behind (another
    organization's), with the policy ``fail``."""

    code = "outside_references"


class OwnershipError(PreflightFailed):
    code = "ownership"


class MoveStateError(BadInput):
    """The move is not in a state that allows the command (cutover before copy, cleanup before
    commit, a second move of the same organization)."""

    code = "move_state"


class TopologyRefused(BadInput):
    code = "topology_refused"


# --- exit 3: verification mismatch ---------------------------------------------------------------


class VerificationMismatch(OrgmoveError):
    code = "verify_mismatch"
    exit_code = EXIT_MISMATCH


class DanglingReferences(VerificationMismatch):
    """The org's rows on the target reference rows that are neither moved nor present there."""

    code = "dangling_references"


# --- exit 1: failed after retries ----------------------------------------------------------------


class TransientError(OrgmoveError):
    """Worth retrying: connection lost, admin shutdown, serialization failure, deadlock."""

    code = "transient"
    retryable = True


class PermanentError(OrgmoveError):
    code = "permanent"


class CopyFailed(PermanentError):
    code = "copy_failed"


class RetainedWalExceeded(OrgmoveError):
    """A move's replication slot kept more WAL than ``defaults.max_retained_wal_mb``: the guard
    dropped the slot and stopped the move (orgmove/capture_guard.py)."""

    code = "retained_wal_exceeded"


class CutoverAborted(OrgmoveError):
    code = "cutover_aborted"


class TopologyUnavailable(TransientError):
    code = "topology_unavailable"


class Interrupted(OrgmoveError):
    code = "interrupted"
    exit_code = 130

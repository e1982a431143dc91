"""The end of every checked vault call, over gRPC (:mod:`vaultsvc.api.interceptor`) or the
console's JSON API (:mod:`vaultsvc.console.calls`): the one place that decides how the
call's audit event is stored before the reply leaves.

- a call the servicer audited itself (a resolve) needs nothing more;
- a call the database refused (nothing read or changed) queues its event without the
  reply waiting: a synchronous write would wait on the same database again;
- an unauthenticated call is counted per peer and minute, not written one by one;
- every other call waits for the group commit: the reply leaves only once the event is
  durable, and a call whose event cannot be stored fails with that error instead.
"""

from __future__ import annotations

import logging

from vaultsvc.audit import AuditWriter, CallContext
from vaultsvc.domain import safe_label
from vaultsvc.errors import Reason, Unauthenticated, VaultError
from vaultsvc.storage.errors import DATABASE_REFUSALS

_log = logging.getLogger("vaultsvc.server")


def sanitize_names(call: CallContext) -> None:
    """Names a handler recorded before validating them may hold control characters."""
    call.record.secret_names = [safe_label(n, 128) for n in call.record.secret_names]


def submit_quietly(audit: AuditWriter, call: CallContext) -> None:
    """Queue the event without waiting for it: a cancelled call gets no reply, and a call
    the database refused has nothing to wait for."""
    sanitize_names(call)
    try:
        audit.submit(call.record)
    except VaultError:  # queue full, stopped, or the audit trail cannot be written
        _log.error(
            "audit event for a cancelled call could not be queued",
            extra={"request_id": call.request_id},
        )


#: Refusals whose event joins the group commit without the reply waiting: nothing was read
#: or changed, and waiting would hit the same database again (or, for shed load, make
#: shedding as slow as serving).
QUIET_REFUSALS: frozenset[Reason] = DATABASE_REFUSALS | {Reason.OVERLOADED}


async def settle_audit(
    audit: AuditWriter, call: CallContext, error: VaultError | None
) -> VaultError | None:
    """Store the event of a finished call (see the module docstring); the error the caller
    gets: ``error``, or the audit trail's own when the event could not be committed."""
    if call.audited:
        return error
    call.record.outcome = error.code.value if error is not None else "OK"
    if error is not None and error.reason in QUIET_REFUSALS:
        submit_quietly(audit, call)
        return error
    sanitize_names(call)
    if isinstance(error, Unauthenticated):
        # Aggregated per peer and minute, not one INSERT each: a flood of bad tokens costs
        # a counter, so no budget of waiting refusals is needed.
        audit.count_refusal(call.peer)
        return error
    try:
        # Group commit: the reply leaves only once the event is durable.
        await audit.commit(call.record)
    except VaultError as exc:
        return exc
    return error

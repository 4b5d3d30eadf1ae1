# -*- test-case-name: tests.test_logs,tests.test_observability -*-
"""
The audit trail: one structured event per STS request, as a JSON object,
logged under the C{stsd.ops.audit} namespace so that shippers can route it.

It names who asked for what and what they got — never a token, a secret
key or a session token (the AccessKeyId of issued credentials is not a
secret, and it is what ties an S3 request in MinIO's logs back to this
event).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import Logger

from stsd.core.exchange import Issued, Trail
from stsd.http.wire import format_expiration
from stsd.ops.logs import AUDIT_FORMAT

log = Logger(namespace="stsd.ops.audit")


def audit_event(
    *,
    request_id: str,
    trail: Trail,
    outcome: str,
    status: int,
    latency: float,
    issued: Issued | None = None,
) -> dict[str, Any]:
    identity = trail.identity
    event: dict[str, Any] = {
        "event": "sts.AssumeRoleWithWebIdentity",
        "request_id": request_id,
        "client": trail.client,
        "tenant_namespace": trail.namespace,
        "serviceaccount": identity.username if identity else None,
        "pod": identity.pod if identity else None,
        "bindings": list(trail.grant.bindings) if trail.grant else [],
        "policies": list(trail.policies_used),
        "tenant": trail.tenant,
        "authorization": trail.authorization,
        "parent_user": trail.parent_user,
        "requested_duration_seconds": trail.requested_duration,
        "outcome": outcome,
        "status": status,
        "latency_ms": round(latency * 1000, 3),
    }
    if issued is not None:
        event["granted_duration_seconds"] = trail.requested_duration
        event["expiration"] = format_expiration(issued.credentials.expiration)
        event["access_key_id"] = issued.credentials.access_key_id
        event["session_policy_bytes"] = issued.policy_bytes
        event["reused"] = trail.reused
    return event


def emit(event: dict[str, Any]) -> None:
    # The message is the JSON itself (machine-readable in text logs too); the
    # fields are also attached, so a JSON log observer carries them as keys.
    log.info(AUDIT_FORMAT, audit_json=json.dumps(event), audit=event)

# -*- test-case-name: tests.test_identity -*-
"""
Who is asking: a ServiceAccount token checked by a Kubernetes TokenReview.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.logger import Logger

from stsd import errors
from stsd.upstream.kube import KubernetesError
from stsd.http.wire import is_dns_label

log = Logger()

_SA_PREFIX = "system:serviceaccount:"
_POD_NAME = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True)
class Identity:
    namespace: str
    serviceaccount: str
    pod: str | None = None
    # The token's verified exp, when the authenticator read it (JWKS):
    # spares the token cache decoding the token again. Not part of who it is.
    expires: float | None = field(default=None, compare=False, repr=False)

    @property
    def username(self) -> str:
        return f"{_SA_PREFIX}{self.namespace}:{self.serviceaccount}"


class TokenReviewer(Protocol):
    async def token_review(self, token: str, audience: str) -> dict[str, Any]: ...


def parse_serviceaccount(username: object) -> tuple[str, str] | None:
    """
    Split C{system:serviceaccount:<namespace>:<name>}; anything else (an
    OIDC user, a node, a malformed name) is C{None}. The upstream operator
    strips the prefix wherever it occurs and would read C{oidc:alice} as
    ServiceAccount C{alice} in namespace C{oidc}.
    """
    if not isinstance(username, str) or not username.startswith(_SA_PREFIX):
        return None
    parts = username[len(_SA_PREFIX):].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    # ServiceAccount names are DNS subdomains; the namespace a DNS label.
    if not is_dns_label(namespace) or not _is_dns_subdomain(name):
        return None
    return namespace, name


def _is_dns_subdomain(name: str) -> bool:
    return 0 < len(name) <= 253 and all(is_dns_label(p) for p in name.split("."))


class TokenReviewAuthenticator:
    """
    Authenticate with the API server's TokenReview; accept only when it
    says authenticated AND confirms our audience.
    """

    def __init__(self, reviewer: TokenReviewer, audience: str) -> None:
        self._reviewer = reviewer
        self.audience = audience

    async def authenticate(self, token: str) -> Identity:
        try:
            status = await self._reviewer.token_review(token, self.audience)
        except KubernetesError as e:
            log.warn("TokenReview failed: {reason}", reason=str(e))
            raise errors.idp_communication_error(
                "the Kubernetes API server could not review the token; retry later"
            ) from None
        if status.get("authenticated") is not True:
            # status.error says why (expired, bad signature); it quotes no token.
            log.info("token not authenticated: {reason}", reason=str(status.get("error", ""))[:200])
            raise errors.access_denied("the token was not authenticated by Kubernetes")
        audiences = status.get("audiences")
        if not isinstance(audiences, list) or self.audience not in audiences:
            raise errors.access_denied(f"the token is not valid for the audience {self.audience}")
        user = status.get("user") or {}
        parsed = parse_serviceaccount(user.get("username"))
        if parsed is None:
            raise errors.invalid_identity_token(
                "the token does not belong to a Kubernetes ServiceAccount"
            )
        pod = None
        extra = user.get("extra")
        if isinstance(extra, dict):
            names = extra.get(_POD_NAME)
            if isinstance(names, list) and names and isinstance(names[0], str):
                pod = names[0]
        return Identity(parsed[0], parsed[1], pod)

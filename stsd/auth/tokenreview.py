# -*- test-case-name: tests.test_tokenreview -*-
"""
Who is asking: a ServiceAccount token checked by a Kubernetes TokenReview.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger

from stsd import errors
from stsd.model import Identity, parse_serviceaccount
from stsd.upstream.kube import KubernetesError

log = Logger()

_POD_NAME = "authentication.kubernetes.io/pod-name"



class TokenReviewer(Protocol):
    async def token_review(self, token: str, audience: str) -> dict[str, Any]: ...




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

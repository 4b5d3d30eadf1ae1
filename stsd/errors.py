# -*- test-case-name: tests.test_wire -*-
"""
The STS errors stsd answers with: one exception type carrying the AWS
error Code, the HTTP status and a message that is safe to show a client.

Every failure that reaches the HTTP layer is either an L{STSError} or an
unexpected exception, which becomes InternalError with a generic message
(the traceback goes to the log, never to the client).
"""

from __future__ import annotations

from functools import partial


class STSError(Exception):
    """
    An error answered to the client as an STS ErrorResponse.

    @ivar code: the AWS STS error Code.
    @ivar status: the HTTP status.
    @ivar message: text for the client; never a secret, token or credential.
    @ivar retry_after: seconds for a C{Retry-After} header, if any.
    """

    def __init__(
        self, code: str, message: str, status: int = 400, *, retry_after: int | None = None
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @property
    def type(self) -> str:
        # AWS reports client faults as Sender, its own as Receiver.
        return "Sender" if self.status < 500 else "Receiver"


# One constructor per Code, each taking the message for the client:
# raise errors.access_denied("...").
invalid_parameter = partial(STSError, "InvalidParameterValue", status=400)
missing_parameter = partial(STSError, "MissingParameter", status=400)
invalid_identity_token = partial(STSError, "InvalidIdentityToken", status=400)
access_denied = partial(STSError, "AccessDenied", status=403)
malformed_policy = partial(STSError, "MalformedPolicyDocument", status=400)
packed_policy_too_large = partial(STSError, "PackedPolicyTooLarge", status=400)
idp_communication_error = partial(STSError, "IDPCommunicationError", status=400)
not_initialized = partial(STSError, "STSNotInitialized", status=503)
internal_error = partial(STSError, "InternalError", status=500)

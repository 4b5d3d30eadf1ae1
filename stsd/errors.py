# -*- test-case-name: tests.test_wire -*-
"""
The STS errors stsd answers with: one exception type carrying the AWS
error Code, the HTTP status and a message that is safe to show a client.

Every failure that reaches the HTTP layer is either an L{STSError} or an
unexpected exception, which becomes InternalError with a generic message
(the traceback goes to the log, never to the client).
"""

from __future__ import annotations


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


def invalid_parameter(message: str) -> STSError:
    return STSError("InvalidParameterValue", message, 400)


def missing_parameter(message: str) -> STSError:
    return STSError("MissingParameter", message, 400)


def invalid_identity_token(message: str) -> STSError:
    return STSError("InvalidIdentityToken", message, 400)


def access_denied(message: str) -> STSError:
    return STSError("AccessDenied", message, 403)


def malformed_policy(message: str) -> STSError:
    return STSError("MalformedPolicyDocument", message, 400)


def packed_policy_too_large(message: str) -> STSError:
    return STSError("PackedPolicyTooLarge", message, 400)


def idp_communication_error(message: str) -> STSError:
    return STSError("IDPCommunicationError", message, 400)


def not_initialized(message: str) -> STSError:
    return STSError("STSNotInitialized", message, 503)


def internal_error(message: str) -> STSError:
    return STSError("InternalError", message, 500)

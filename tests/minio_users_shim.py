"""
A test-only stand-in for MinIO's user admin API and for AssumeRole signed
by a regular user, in front of L{stsd.testing.fake_minio.FakeMinIO} (which
answers everything else): enough for the in-memory tests of the parent-user
mode. It decrypts C{add-user} bodies and encrypts C{list-users} answers
with the C{minio} package's C{madmin} crypto, checks every signature with
the fake's independent SigV4 verifier, and refuses what MinIO refuses
(access keys of 3-20 characters without C{=} or C{,}, secrets of 8-40,
unknown policies, unknown users).

(The fuller fake, with an S3 API evaluating the parent's policies, is
L{stsd.testing.fake_minio}'s once the user API lands there.)
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from twisted.web.resource import Resource

from stsd.testing.fake_minio import FakeMinIO, verify_sigv4
from stsd.upstream.minio import decrypt_payload, encrypt_payload

_STS_NS = "https://sts.amazonaws.com/doc/2011-06-15/"


@dataclass
class User:
    secret: str
    status: str
    policies: tuple[str, ...] = ()


@dataclass
class Derived:
    access_key: str
    parent: str
    policy: str


@dataclass
class UsersShim:
    minio: FakeMinIO
    users: dict[str, User] = field(default_factory=dict)
    derived: dict[str, Derived] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # route -> answers of 500 to give

    def resource(self) -> Resource:
        return _ShimResource(self)

    def fail(self, route: str, times: int = 1) -> None:
        self.failures[route] = times

    def routes(self) -> list[str]:
        return [c[0] for c in self.calls]

    def render(self, request: Any, local_path: str) -> bytes:
        method = request.method.decode()
        raw_path, _, raw_query = request.uri.decode("latin-1").partition("?")
        request.content.seek(0)
        body = request.content.read()
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        route = {
            "/minio/admin/v3/add-user": "add-user",
            "/minio/admin/v3/remove-user": "remove-user",
            "/minio/admin/v3/set-user-or-group-policy": "set-policy",
            "/minio/admin/v3/list-users": "list-users",
        }.get(local_path)

        def header(name: str) -> list[str] | None:
            values = request.requestHeaders.getRawHeaders(name)
            return None if values is None else [
                v.decode("latin-1") if isinstance(v, bytes) else v for v in values]

        if route is None:
            if local_path in ("", "/") and method == "POST":
                key_id = _key_id(header)
                if key_id in self.users:
                    return self._assume_role(request, raw_path, raw_query, header, body, key_id)
            return self.minio._render(request, local_path)  # type: ignore[no-any-return]
        if self.failures.get(route, 0) > 0:
            self.failures[route] -= 1
            self.calls.append((route, "failed"))
            return _json(request, 500, {"Code": "InternalError", "Message": "injected"})
        problem = verify_sigv4(
            method=method, raw_path=raw_path, raw_query=raw_query, header=header, body=body,
            access_key=self.minio.access_key, secret_key=self.minio.secret_key,
            now=self.minio.clock.seconds(), service="s3", region=None)
        if problem is not None:
            return _json(request, problem.status, {"Code": problem.code, "Message": problem.message})
        handler: Callable[..., bytes] = getattr(self, "_" + route.replace("-", "_"))
        return handler(request, method, query, body)

    def _add_user(self, request: Any, method: str, query: dict[str, str], body: bytes) -> bytes:
        name = query.get("accessKey", "")
        if method != "PUT":
            return _json(request, 405, {"Code": "MethodNotAllowed"})
        try:
            plain = decrypt_payload(body, self.minio.secret_key)
            document = json.loads(plain)
        except Exception:
            return _json(request, 400, {"Code": "XMinioAdminConfigBadJSON"})
        self.calls.append(("add-user", name))
        secret = document.get("secretKey", "")
        if not 3 <= len(name) <= 20 or "=" in name or "," in name:
            return _json(request, 400, {"Code": "XMinioAdminInvalidArgument",
                                        "Message": "access key length should be between 3 and 20"})
        if not 8 <= len(secret) <= 40:
            return _json(request, 400, {"Code": "XMinioAdminInvalidArgument",
                                        "Message": "secret key length should be between 8 and 40"})
        old = self.users.get(name)
        self.users[name] = User(secret, document.get("status", ""), old.policies if old else ())
        return _json(request, 200, None)

    def _remove_user(self, request: Any, method: str, query: dict[str, str], body: bytes) -> bytes:
        name = query.get("accessKey", "")
        self.calls.append(("remove-user", name))
        if name not in self.users:
            return _json(request, 404, {"Code": "XMinioAdminNoSuchUser"})
        del self.users[name]
        # MinIO deletes the credentials derived from a user with it.
        self.derived = {k: v for k, v in self.derived.items() if v.parent != name}
        return _json(request, 200, None)

    def _set_policy(self, request: Any, method: str, query: dict[str, str], body: bytes) -> bytes:
        name = query.get("userOrGroup", "")
        names = tuple(p for p in query.get("policyName", "").split(",") if p)
        self.calls.append(("set-policy", name, ",".join(names)))
        if query.get("isGroup") != "false" or name not in self.users:
            return _json(request, 404, {"Code": "XMinioAdminNoSuchUser"})
        if any(p not in self.minio._policies for p in names):
            return _json(request, 404, {"Code": "XMinioAdminNoSuchPolicy",
                                        "Message": "The canned policy does not exist."})
        self.users[name].policies = names
        return _json(request, 200, None)

    def _list_users(self, request: Any, method: str, query: dict[str, str], body: bytes) -> bytes:
        self.calls.append(("list-users",))
        answer = {name: {"policyName": ",".join(u.policies), "status": u.status}
                  for name, u in self.users.items()}
        request.setResponseCode(200)
        return encrypt_payload(json.dumps(answer).encode(), self.minio.secret_key)

    def _assume_role(self, request: Any, raw_path: str, raw_query: str, header: Any, body: bytes,
                     key_id: str) -> bytes:
        user = self.users[key_id]
        problem = verify_sigv4(
            method="POST", raw_path=raw_path, raw_query=raw_query, header=header, body=body,
            access_key=key_id, secret_key=user.secret, now=self.minio.clock.seconds(),
            service="sts", region=self.minio.region)
        if problem is not None:
            return _sts_error(request, problem.status, problem.code)
        form = dict(parse_qsl(body.decode(), keep_blank_values=True))
        policy = form.get("Policy", "")
        if len(policy.encode()) > 2048:
            return _sts_error(request, 400, "InvalidParameterValue")
        self.calls.append(("assume-role", key_id, policy))
        duration = int(form.get("DurationSeconds", "3600"))
        access_key = secrets.token_hex(10).upper()
        self.derived[access_key] = Derived(access_key, key_id, policy)
        expiration = datetime.datetime.fromtimestamp(
            int(self.minio.clock.seconds()) + duration, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        secret = base64.b64encode(secrets.token_bytes(30)).decode()
        xml = (f'<AssumeRoleResponse xmlns="{_STS_NS}"><AssumeRoleResult><Credentials>'
               f"<AccessKeyId>{access_key}</AccessKeyId><SecretAccessKey>{secret}</SecretAccessKey>"
               f"<Expiration>{expiration}</Expiration><SessionToken>tok-{access_key}</SessionToken>"
               "</Credentials></AssumeRoleResult></AssumeRoleResponse>")
        request.setResponseCode(200)
        request.setHeader("content-type", "text/xml")
        return xml.encode()


def _key_id(header: Any) -> str:
    auth = (header("authorization") or [""])[0]
    _, _, rest = auth.partition("Credential=")
    return rest.split("/", 1)[0]


def _json(request: Any, status: int, document: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader("content-type", "application/json")
    return b"" if document is None else json.dumps(document).encode()


def _sts_error(request: Any, status: int, code: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader("content-type", "text/xml")
    return (f'<ErrorResponse xmlns="{_STS_NS}"><Error><Code>{code}</Code><Message>refused'
            "</Message></Error></ErrorResponse>").encode()


class _ShimResource(Resource):
    isLeaf = True

    def __init__(self, shim: UsersShim) -> None:
        super().__init__()
        self._shim = shim

    def render(self, request: Any) -> bytes:
        path = request.path.decode()
        # Behind a router path prefix /{namespace}: strip it.
        _, _, rest = path.lstrip("/").partition("/")
        return self._shim.render(request, "/" + rest)

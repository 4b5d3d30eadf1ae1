# -*- test-case-name: tests.test_minio -*-
"""
A tenant's MinIO: server region, canned policy documents, AssumeRole,
signed with SigV4 (L{stsd.upstream.sigv4}, checked against the C{minio} package's
signer). The calls go through a transport: in the daemon the keep-alive
client of L{stsd.upstream.keepalive}; in memory, treq's C{StubTreq} through
L{stsd.upstream.http.TreqTransport}.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode, urlsplit
from xml.etree import ElementTree

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from stsd.model import STS_NAMESPACE, IssuedCredentials, RootCredentials, TenantEndpoint
from stsd.upstream.http import Response, Transport, UpstreamError
from stsd.upstream.sigv4 import Signer

_NS = {"sts": STS_NAMESPACE}
_FORM_CACHE_SIZE = 1024
#: How long a tenant's region (L{MinIOClient.region}) is remembered.
REGION_TTL = 300.0
#: MinIO refuses longer session policies (bytes).
MINIO_POLICY_LIMIT = 2048


class MinIOError(Exception):
    """
    A MinIO call failed. The message names the tenant and what MinIO said,
    never a credential.

    @ivar code: MinIO's error Code when it answered with one, else C{""}.
    """

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class NoSuchPolicy(MinIOError):
    """
    MinIO refused to attach policies because one of them does not exist.
    """


T = TypeVar("T")


class PayloadCrypto(Protocol):
    """
    MinIO's admin payload encryption (argon2id key derivation, then AES-GCM):
    tens of milliseconds of CPU per call, so never on the reactor thread.
    """

    def encrypt(self, payload: bytes, password: str) -> Deferred[bytes]: ...

    def decrypt(self, payload: bytes, password: str) -> Deferred[bytes]: ...

    def decrypt_json(self, payload: bytes, password: str) -> Deferred[Any]:
        """Decrypt and parse as JSON (a large answer is parsed off the reactor too)."""


class _Body:
    # What minio.crypto.decrypt reads from: a urllib3 response, here in memory.
    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def encrypt_payload(payload: bytes, password: str) -> bytes:
    """
    Encrypt an admin request body as C{madmin.EncryptData} does, with the
    C{minio} package's own implementation. Blocking: call it in a thread.
    """
    from minio.crypto import encrypt  # noqa: PLC0415 - argon2 and pycryptodome load late

    return encrypt(payload, password)


def decrypt_payload(payload: bytes, password: str) -> bytes:
    """
    Decrypt an admin answer (C{madmin.DecryptData}). Blocking: call it in a
    thread.

    @raise ValueError: the payload is truncated or its tag does not verify.
    """
    from minio.crypto import decrypt  # noqa: PLC0415

    try:
        # minio declares a urllib3 response, of which it uses what _Body has.
        return decrypt(_Body(payload), password)  # type: ignore[arg-type]
    except (OSError, KeyError, IndexError) as e:
        raise ValueError(f"undecryptable payload: {type(e).__name__}") from None


def decrypt_json_payload(payload: bytes, password: str) -> Any:
    """
    L{decrypt_payload}, then JSON.

    @raise ValueError: undecryptable, or not JSON.
    """
    try:
        return json.loads(decrypt_payload(payload, password))
    except RecursionError:
        raise ValueError("too deeply nested") from None


class ThreadedPayloadCrypto:
    """
    L{PayloadCrypto} in a thread pool: the reactor thread only hands the
    work over and receives the result.
    """

    def __init__(self, reactor: IReactorFromThreads, pool: ThreadPool) -> None:
        self._reactor = reactor
        self._pool = pool

    def _run(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def encrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        return self._run(encrypt_payload, payload, password)

    def decrypt(self, payload: bytes, password: str) -> Deferred[bytes]:
        return self._run(decrypt_payload, payload, password)

    def decrypt_json(self, payload: bytes, password: str) -> Deferred[Any]:
        return self._run(decrypt_json_payload, payload, password)


@dataclass(frozen=True)
class UserInfo:
    """
    A MinIO user as list-users describes it.
    """

    policies: tuple[str, ...]  # sorted
    status: str




def _quote(value: str) -> str:
    # SigV4's canonical query encoding (RFC 3986 unreserved characters).
    return quote(value, safe="-_.~")


class MinIOClient:
    """
    The MinIO calls stsd makes, each bounded by C{timeout} seconds.
    """

    def __init__(
        self,
        transport: Transport,
        clock: IReactorTime,
        timeout: float,
        crypto: PayloadCrypto | None = None,
    ) -> None:
        self._transport = transport
        # Only the user admin calls (parent-user mode) need it.
        self._crypto = crypto
        self._clock = clock
        self._timeout = timeout
        self._signers: dict[RootCredentials, Signer] = {}
        self._stamp = (-1, "")
        self._urls: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        # (session policy, duration) -> the AssumeRole form and its SHA-256:
        # percent-encoding a policy document is most of building the call.
        self._forms: OrderedDict[tuple[bytes, int], tuple[bytes, str]] = OrderedDict()

    def _signer(self, credentials: RootCredentials) -> Signer:
        signer = self._signers.get(credentials)
        if signer is None:
            if len(self._signers) > 1024:  # rotated-away credentials
                self._signers.clear()
            signer = self._signers[credentials] = Signer(
                credentials.access_key, credentials.secret_key)
        return signer

    def _amz_date(self) -> str:
        # The SigV4 timestamp, formatted once per second.
        second = int(self._clock.seconds())
        if second != self._stamp[0]:
            self._stamp = (second, datetime.fromtimestamp(second, tz=UTC).strftime(
                "%Y%m%dT%H%M%SZ"))
        return self._stamp[1]

    async def _signed(
        self,
        tenant: TenantEndpoint,
        method: str,
        path: str,
        *,
        target: str,
        metric: str,
        service: str,
        region: str,
        query: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        content_sha256: str | None = None,
        content_type: str | None = None,
    ) -> Response:
        query_string = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query))
        url, path, netloc = self._url(tenant.url, path, query_string)
        amz_date = self._amz_date()
        if content_sha256 is None:
            content_sha256 = hashlib.sha256(body).hexdigest()
        # Sign exactly the headers that are sent.
        headers: dict[str, str] = {
            "Host": netloc,
            "X-Amz-Date": amz_date,
            "X-Amz-Content-Sha256": content_sha256,
        }
        if content_type:
            headers["Content-Type"] = content_type
        headers["Authorization"] = self._signer(tenant.credentials).authorization(
            method=method, path=path, query=query_string, headers=headers,
            content_sha256=content_sha256, amz_date=amz_date, region=region, service=service,
        )
        try:
            return await self._transport.request(
                method, url, target=f"{target} on tenant {tenant.name}", timeout=self._timeout,
                headers=headers, data=body or None, metric=metric,
            )
        except UpstreamError as e:
            raise MinIOError(str(e)) from None

    def _url(self, base_url: str, path: str, query: str) -> tuple[str, str, str]:
        # (URL, its path as signed, Host) for a path under a tenant's URL (a
        # path prefix is kept); the AssumeRole URL is the same every time.
        key = (base_url, path, query)
        found = self._urls.get(key)
        if found is None:
            base = urlsplit(base_url)
            full_path = base.path.rstrip("/") + path
            found = (base._replace(path=full_path, query=query).geturl(), full_path,
                     base.netloc)
            if len(self._urls) >= 4096:
                self._urls.clear()
            self._urls[key] = found
        return found

    @staticmethod
    def _admin_error(tenant: TenantEndpoint, target: str, response: Response) -> MinIOError:
        detail = ""
        try:
            document = json.loads(response.body)
            detail = f"{document.get('Code', '')}: {str(document.get('Message', ''))[:200]}"
        except (ValueError, AttributeError, RecursionError):
            pass
        return MinIOError(f"{target} on tenant {tenant.name}: HTTP {response.status} {detail}",
                          _admin_code(response))

    async def region(self, tenant: TenantEndpoint) -> str:
        """
        The tenant's region, from the admin API's server info. The admin API
        accepts any signing region, so it can be asked before the region is known.
        """
        response = await self._signed(
            tenant, "GET", "/minio/admin/v3/info", target="server info",
            metric="admin", service="s3", region="us-east-1",
        )
        if response.status != 200:
            raise self._admin_error(tenant, "server info", response)
        try:
            region = json.loads(response.body).get("region")
        except (ValueError, AttributeError, RecursionError):
            raise MinIOError(f"server info on tenant {tenant.name}: not JSON") from None
        # MinIO reports no region when none is configured; it then signs as us-east-1.
        return region if isinstance(region, str) and region else "us-east-1"

    async def canned_policy(self, tenant: TenantEndpoint, region: str, name: str) -> str | None:
        """
        The text of the canned policy C{name}, or C{None} if MinIO has none
        (C{""} if MinIO's answer is unreadable).
        """
        response = await self._signed(
            tenant, "GET", "/minio/admin/v3/info-canned-policy", target=f"policy {name!r}",
            metric="admin", service="s3", region=region, query=[("name", name), ("v", "2")],
        )
        if response.status == 404:
            return None
        if response.status != 200:
            raise self._admin_error(tenant, f"policy {name!r}", response)
        try:
            policy = json.loads(response.body)["Policy"]
        except (ValueError, KeyError, TypeError, RecursionError):
            # MinIO splices the stored document in verbatim: a corrupt policy
            # makes the whole answer unparsable. That is this policy's fault,
            # not MinIO's: give back text that fails to parse, so that the
            # caller skips this one policy instead of failing the request.
            return ""
        return policy if isinstance(policy, str) else json.dumps(policy)

    def _payloads(self) -> PayloadCrypto:
        if self._crypto is None:
            raise RuntimeError("this MinIO client has no payload crypto for the user admin API")
        return self._crypto

    async def add_user(
        self, tenant: TenantEndpoint, region: str, access_key: str, secret_key: str
    ) -> None:
        """
        Create the user C{access_key}, or set its secret and enable it if it
        exists (C{add-user} is an upsert: calling it again converges). Its
        policy mapping is kept.
        """
        body = json.dumps({"secretKey": secret_key, "status": "enabled"}).encode()
        encrypted = await self._payloads().encrypt(body, tenant.credentials.secret_key)
        response = await self._signed(
            tenant, "PUT", "/minio/admin/v3/add-user", target=f"add user {access_key}",
            metric="admin", service="s3", region=region, query=[("accessKey", access_key)],
            body=encrypted, content_type="application/octet-stream",
        )
        if response.status != 200:
            raise self._admin_error(tenant, f"add user {access_key}", response)

    async def remove_user(self, tenant: TenantEndpoint, region: str, access_key: str) -> bool:
        """
        Remove the user C{access_key}; MinIO removes the credentials derived
        from it with it. C{False} if there was no such user.
        """
        response = await self._signed(
            tenant, "DELETE", "/minio/admin/v3/remove-user", target=f"remove user {access_key}",
            metric="admin", service="s3", region=region, query=[("accessKey", access_key)],
        )
        if response.status == 200:
            return True
        if response.status == 404 and _admin_code(response) == "XMinioAdminNoSuchUser":
            return False
        raise self._admin_error(tenant, f"remove user {access_key}", response)

    async def set_user_policies(
        self, tenant: TenantEndpoint, region: str, access_key: str, policies: Sequence[str]
    ) -> None:
        """
        Make C{policies} exactly the policies attached to user C{access_key}
        (C{set-user-or-group-policy} replaces the whole mapping; none removes
        it), so repeating the call, from any replica, converges.

        @raise NoSuchPolicy: one of C{policies} does not exist.
        """
        response = await self._signed(
            tenant, "PUT", "/minio/admin/v3/set-user-or-group-policy",
            target=f"set policies of user {access_key}", metric="admin", service="s3",
            region=region, query=[("policyName", ",".join(policies)),
                                  ("userOrGroup", access_key), ("isGroup", "false")],
        )
        if response.status == 200:
            return
        error = self._admin_error(tenant, f"set policies of user {access_key}", response)
        if response.status == 404 and _admin_code(response) == "XMinioAdminNoSuchPolicy":
            raise NoSuchPolicy(str(error), error.code)
        raise error

    async def list_users(self, tenant: TenantEndpoint, region: str) -> dict[str, UserInfo]:
        """
        Every user of the tenant with its attached policies (the answer is
        encrypted with the root secret key).
        """
        response = await self._signed(
            tenant, "GET", "/minio/admin/v3/list-users", target="list users",
            metric="admin", service="s3", region=region,
        )
        if response.status != 200:
            raise self._admin_error(tenant, "list users", response)
        try:
            document = await self._payloads().decrypt_json(
                response.body, tenant.credentials.secret_key)
        except ValueError:
            raise MinIOError(f"list users on tenant {tenant.name}: answer does not decrypt "
                             "to JSON") from None
        if not isinstance(document, dict):
            raise MinIOError(f"list users on tenant {tenant.name}: answer is not a JSON object")
        users = {}
        for name, info in document.items():
            if not isinstance(info, Mapping):
                continue
            names = info.get("policyName")
            status = info.get("status")
            users[name] = UserInfo(
                tuple(sorted({p for p in names.split(",") if p}))
                if isinstance(names, str) else (),
                status if isinstance(status, str) else "")
        return users

    async def assume_role(
        self, tenant: TenantEndpoint, region: str, policy: bytes, duration: int,
        *, as_user: RootCredentials | None = None,
    ) -> IssuedCredentials:
        """
        Mint credentials. Signed with the root credentials they are limited
        by the session C{policy}, and there is no variant without one: that
        would hand out root's rights. Signed C{as_user} (a parent user whose
        attached policies MinIO evaluates), C{policy} may be empty.
        """
        if not policy and as_user is None:
            raise ValueError("AssumeRole as root needs a session policy")
        body, digest = self._form(policy, duration)
        if as_user is not None:
            tenant = TenantEndpoint(tenant.name, tenant.url, as_user)
        response = await self._signed(
            tenant, "POST", "/", target="AssumeRole", metric="assumerole",
            service="sts", region=region, body=body, content_sha256=digest,
            content_type="application/x-www-form-urlencoded",
        )
        fields = _plain_credentials(response) if response.status == 200 else None
        if fields is None:
            fields = self._parsed_credentials(tenant, response)
        try:
            expiration = datetime.fromisoformat(fields["Expiration"].replace("Z", "+00:00"))
        except ValueError:
            raise MinIOError(f"AssumeRole on tenant {tenant.name}: bad Expiration") from None
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        return IssuedCredentials(
            fields["AccessKeyId"], fields["SecretAccessKey"], fields["SessionToken"], expiration
        )

    def _form(self, policy: bytes, duration: int) -> tuple[bytes, str]:
        key = (policy, duration)
        form = self._forms.get(key)
        if form is None:
            fields = {
                "Action": "AssumeRole",
                "Version": "2011-06-15",
                "DurationSeconds": str(duration),
            }
            if policy:
                fields["Policy"] = policy.decode("utf-8")
            body = urlencode(fields).encode()
            form = self._forms[key] = (body, hashlib.sha256(body).hexdigest())
            if len(self._forms) > _FORM_CACHE_SIZE:
                self._forms.popitem(last=False)
        else:
            self._forms.move_to_end(key)
        return form

    @staticmethod
    def _parsed_credentials(tenant: TenantEndpoint, response: Response) -> dict[str, str]:
        try:
            root = ElementTree.fromstring(response.body)
        except ElementTree.ParseError:
            raise MinIOError(
                f"AssumeRole on tenant {tenant.name}: HTTP {response.status} with a body "
                "that is not XML"
            ) from None
        if response.status != 200:
            code = root.findtext(".//sts:Error/sts:Code", "", _NS)
            message = root.findtext(".//sts:Error/sts:Message", "", _NS)[:200]
            raise MinIOError(
                f"AssumeRole on tenant {tenant.name}: HTTP {response.status} {code}: {message}",
                code,
            )
        found = root.find(".//sts:AssumeRoleResult/sts:Credentials", _NS)
        fields = {}
        if found is not None:
            for key in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"):
                fields[key] = found.findtext(f"sts:{key}", "", _NS).strip()
        if not all(fields.get(k) for k in ("AccessKeyId", "SecretAccessKey", "Expiration")):
            raise MinIOError(f"AssumeRole on tenant {tenant.name}: no credentials in the answer")
        return fields


def _admin_code(response: Response) -> str:
    try:
        code = json.loads(response.body).get("Code")
    except (ValueError, AttributeError, RecursionError):
        return ""
    return code if isinstance(code, str) else ""


_FIELDS = ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
_TAGS = [(k, b"<%s>" % k.encode(), b"</%s>" % k.encode()) for k in _FIELDS]
_XMLNS = b'xmlns="' + STS_NAMESPACE.encode() + b'"'


def _plain_credentials(response: Response) -> dict[str, str] | None:
    """
    The credentials of an answer in the plain shape MinIO writes (each
    field once, no entities, no comments or CDATA), read without building a
    tree; C{None} for any other shape, which the XML parser then reads.
    """
    body = response.body
    start = body.find(b"<Credentials>")
    if start < 0 or body.find(b"<Credentials>", start + 1) >= 0 or _XMLNS not in body:
        return None
    end = body.find(b"</Credentials>", start)
    if end < 0:
        return None
    span = body[start + len(b"<Credentials>"):end]
    # No entity, comment, CDATA or processing instruction (none of these
    # characters is in a key, a token or a date; single-byte searches are fast).
    if b"&" in span or b"!" in span or b"?" in span:
        return None
    fields = {}
    for key, opening, closing in _TAGS:
        at = span.find(opening)
        if at < 0 or span.find(opening, at + 1) >= 0:
            return None
        value_at = at + len(opening)
        value_end = span.find(closing, value_at)
        if value_end < 0:
            return None
        value = span[value_at:value_end]
        if b"<" in value:
            return None
        try:
            fields[key] = value.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None
    if not all(fields[k] for k in ("AccessKeyId", "SecretAccessKey", "Expiration")):
        return None
    return fields

"""
The fake MinIO's users, policy mappings, user-signed AssumeRole and S3 API,
checked against what MinIO (minio/minio cmd/admin-handlers-users.go,
cmd/sts-handlers.go, cmd/iam.go, cmd/auth-handler.go) answers, and its
madmin payload decryptor against the C{minio} package's encryption.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import io
import json
import os
import time
from unittest import mock
from urllib.parse import urlencode
from xml.etree import ElementTree

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from minio import crypto
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.madmin_crypto import (
    AES_GCM,
    CHACHA20_POLY1305,
    PBKDF2_AES_GCM,
    MadminCryptoError,
    Sealer,
    decrypt_data,
    encrypt_data,
)
from stsd.testing.pki import TestPKI
from tests._trial import (cases, expand, in_memory, pytest_twisted_functions, serve_loopback,
                          temporary_directory)

AK, SK = "rootuser", "rootpass/with+chars"
REGION = "eu-central-1"
MINIO = "https://minio.test"
READWRITE = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                     "Resource": ["arn:aws:s3:::*"]}]}
READONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                                                    "Action": ["s3:GetObject", "s3:ListBucket"],
                                                    "Resource": ["arn:aws:s3:::*"]}]}
NO_DELETE = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": ["s3:DeleteObject"],
                                                     "Resource": ["arn:aws:s3:::*"]}]}
PHOTOS_ONLY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
                                                       "Resource": ["arn:aws:s3:::photos/*"]}]}


class _Body:
    """A urllib3-like response over bytes, for C{minio.crypto.decrypt}."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


# -- the madmin payload format ------------------------------------------------------


def _refused():
    sealed = crypto.encrypt(os.urandom(20_000), "pass-word")  # two packages
    return [
        ("wrong password", "other-pass", sealed),
        ("one bit flipped", "pass-word", sealed[:60] + bytes([sealed[60] ^ 1]) + sealed[61:]),
        ("last package dropped", "pass-word", sealed[:41 + 16 * 1024 + 16]),
        ("short header", "pass-word", sealed[:40]),
        ("no package", "pass-word", sealed[:41]),
        ("unknown algorithm", "pass-word", sealed[:32] + b"\x07" + sealed[33:]),
        ("empty", "pass-word", b""),
    ]


@expand
class MadminPayloadTests(SynchronousTestCase):
    """The madmin payload format, against the C{minio} package's encryption."""

    @cases("size", [1, 16 * 1024, 16 * 1024 + 1, 40_000])
    def test_decryptor_opens_what_the_minio_package_encrypts(self, size) -> None:
        data = os.urandom(size)
        assert decrypt_data("pass-word", crypto.encrypt(data, "pass-word")) == data

    @cases("aead_id", [AES_GCM, CHACHA20_POLY1305])
    @cases("size", [0, 5, 16 * 1024, 33_000])
    def test_the_minio_package_opens_what_the_fake_encrypts(self, size, aead_id) -> None:
        data = os.urandom(size)
        sealed = encrypt_data("pass-word", data, aead_id=aead_id)
        assert sealed[32] == aead_id
        # minio-py reads no package from an empty stream; madmin writes (and needs) one.
        if size:
            assert crypto.decrypt(_Body(sealed), "pass-word") == data
        assert decrypt_data("pass-word", sealed) == data

    def test_a_sealer_derives_once_and_every_payload_opens(self) -> None:
        sealer = Sealer("pass-word")
        one, two = sealer.seal(b"one"), sealer.seal(b"two")
        assert one[:32] == two[:32] and one[33:41] != two[33:41]  # same salt, fresh nonces
        assert crypto.decrypt(_Body(one), "pass-word") == b"one" and decrypt_data("pass-word", two) == b"two"

    def test_pbkdf2_payloads_of_fips_mode_open(self) -> None:
        assert decrypt_data("pw-pw-pw-pw", encrypt_data("pw-pw-pw-pw", b"{}", aead_id=PBKDF2_AES_GCM)) == b"{}"

    @cases("why,password,data", _refused(), ids=[r[0] for r in _refused()])
    def test_decryptor_refuses_what_madmin_refuses(self, why, password, data) -> None:
        with self.assertRaises(MadminCryptoError):
            decrypt_data(password, data)


# -- the fake MinIO through StubTreq: helpers -----------------------------------------


class UsersCase(SynchronousTestCase):
    """A fake MinIO reached through C{StubTreq}, on a L{Clock} at the wall-clock time."""

    def setUp(self) -> None:
        self.wall_clock = Clock()
        self.wall_clock.advance(time.time())
        self.minio = FakeMinIO(access_key=AK, secret_key=SK, region=REGION, clock=self.wall_clock,
                               policies={"readwrite": READWRITE, "readonly": READONLY, "no-delete": NO_DELETE,
                                         "photos": PHOTOS_ONLY})
        self.addCleanup(self.minio.shutdown)
        self.stub = StubTreq(self.minio.resource())

    def photos(self) -> None:
        """Two buckets, an object in each."""
        self.minio.make_bucket("photos")
        self.minio.make_bucket("docs")
        self.minio.put_object("photos", "a.jpg", b"jpeg")
        self.minio.put_object("docs", "a.txt", b"text")


def signed(method, url, body=b"", *, service="s3", region="us-east-1", key=AK, secret=SK, token=None,
           content_type=None, at=None):
    """Headers signed by botocore (at time C{at}, if given: the fake's clock may run ahead)."""
    headers = {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    if content_type:
        headers["Content-Type"] = content_type
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    auth = SigV4Auth(BotoCredentials(key, secret, token), service, region)
    if at is None:
        auth.add_auth(req)
    else:
        moment = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).replace(tzinfo=None)
        with mock.patch("botocore.auth.get_current_datetime", lambda: moment):
            auth.add_auth(req)
    return dict(req.headers.items())


async def call(stub, method, path, body=b"", **kw):
    url = MINIO + path
    resp = await stub.request(method, url, data=body or None, headers=signed(method, url, body, **kw))
    return resp, await resp.content()


def admin_code(content: bytes) -> str:
    return json.loads(content)["Code"]


async def add_user(stub, access_key, secret_key, status="enabled"):
    body = crypto.encrypt(json.dumps({"secretKey": secret_key, "status": status}).encode(), SK)
    return await call(stub, "PUT", "/minio/admin/v3/add-user?" + urlencode({"accessKey": access_key}), body)


async def attach(stub, operation, user, policies, *, content_type="application/octet-stream", password=SK):
    body = crypto.encrypt(json.dumps({"policies": policies, "user": user}).encode(), password)
    return await call(stub, "POST", f"/minio/admin/v3/idp/builtin/policy/{operation}", body,
                      content_type=content_type)


async def assume(stub, key, secret, policy=None, token=None):
    form = {"Action": "AssumeRole", "Version": "2011-06-15", "DurationSeconds": "900"}
    if policy is not None:
        form["Policy"] = json.dumps(policy)
    body = urlencode(form).encode()
    return await call(stub, "POST", "/", body, service="sts", region=REGION, key=key, secret=secret,
                      token=token, content_type="application/x-www-form-urlencoded")


def credentials(content: bytes) -> tuple[str, str, str]:
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    creds = ElementTree.fromstring(content).find("s:AssumeRoleResult/s:Credentials", ns)
    return tuple(creds.findtext(f"s:{n}", namespaces=ns) for n in ("AccessKeyId", "SecretAccessKey", "SessionToken"))


def s3_code(content: bytes) -> str:
    return ElementTree.fromstring(content).findtext("Code")


async def s3(stub, method, path, creds, body=b"", at=None):
    key, secret, token = creds
    return await call(stub, method, path, body, region=REGION, key=key, secret=secret, token=token, at=at)


class UsersTests(UsersCase):
    """Admin user APIs, user-signed AssumeRole and S3, through C{StubTreq}."""

    # -- admin user APIs ---------------------------------------------------------------

    @in_memory
    async def test_add_user_decrypts_the_body_and_an_update_keeps_the_policies(self) -> None:
        minio, stub = self.minio, self.stub
        resp, content = await add_user(stub, "app-user", "app-secret-1")
        assert resp.code == 200, content
        assert minio.users["app-user"].secret_key == "app-secret-1" and minio.users["app-user"].enabled
        minio.users["app-user"].policies = ("readonly",)
        resp, content = await add_user(stub, "app-user", "app-secret-2", status="disabled")
        assert resp.code == 200
        user = minio.users["app-user"]
        assert (user.secret_key, user.enabled, user.policies) == ("app-secret-2", False, ("readonly",))
        assert "app-secret-2" not in repr(user)
        assert minio.user_secrets == {"app-secret-1", "app-secret-2"}
        assert minio.count("add-user") == 2

    @in_memory
    async def test_add_user_refusals_are_minio_s(self) -> None:
        minio, stub = self.minio, self.stub
        # encrypted with another password than the signer's secret: MinIO cannot open it
        body = crypto.encrypt(json.dumps({"secretKey": "app-secret-1", "status": "enabled"}).encode(), "not-root")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/add-user?accessKey=app", body)
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminConfigBadJSON")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/add-user?accessKey=app",
                                   json.dumps({"secretKey": "app-secret-1", "status": "enabled"}).encode())
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminConfigBadJSON")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/add-user?accessKey=app",
                                   crypto.encrypt(b"not json", SK))
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminConfigBadJSON")
        resp, content = await add_user(stub, AK, "app-secret-1")
        assert (resp.code, admin_code(content)) == (403, "XMinioInvalidIAMCredentials")
        resp, content = await add_user(stub, "app", "short")
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminInvalidSecretKey")
        resp, content = await add_user(stub, "a,b", "app-secret-1")
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminInvalidAccessKey")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/add-user", crypto.encrypt(b"{}", SK))
        assert (resp.code, admin_code(content)) == (426, "XMinioAdminVersionMismatch")
        resp, content = await call(stub, "GET", "/minio/admin/v3/add-user?accessKey=app")
        assert resp.code == 405
        assert minio.users == {}

    def test_encrypted_bodies_may_be_opened_off_the_request(self) -> None:
        wall_clock = self.wall_clock
        pending: list = []

        def later(work):
            d = Deferred()
            pending.append((work, d))
            return d

        fake = FakeMinIO(access_key=AK, secret_key=SK, region=REGION, clock=wall_clock,
                         policies={"readonly": READONLY}, run_in_thread=later)
        stub = StubTreq(fake.resource())
        answers: list = []
        url = MINIO + "/minio/admin/v3/add-user?accessKey=app-user"
        body = crypto.encrypt(json.dumps({"secretKey": "app-secret-1", "status": "enabled"}).encode(), SK)
        stub.request("PUT", url, data=body, headers=signed("PUT", url, body)).addCallback(answers.append)
        stub.flush()
        assert answers == [] and fake.users == {} and len(pending) == 1
        work, d = pending.pop()
        d.callback(work())  # what the thread pool would do
        stub.flush()
        assert answers[0].code == 200 and fake.users["app-user"].secret_key == "app-secret-1"
        # undecryptable, decided in the worker too
        body = crypto.encrypt(b"{}", "not-root")
        stub.request("PUT", url, data=body, headers=signed("PUT", url, body)).addCallback(answers.append)
        stub.flush()
        work, d = pending.pop()
        d.callback(work())
        stub.flush()
        assert answers[1].code == 400 and fake.users["app-user"].secret_key == "app-secret-1"

    @in_memory
    async def test_admin_user_apis_serve_root_only(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-user", "app-secret-1", ["readwrite"])
        body = crypto.encrypt(json.dumps({"secretKey": "other-secret", "status": "enabled"}).encode(), "app-secret-1")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/add-user?accessKey=other", body,
                                   key="app-user", secret="app-secret-1")
        assert (resp.code, admin_code(content)) == (403, "AccessDenied")
        resp, content = await call(stub, "GET", "/minio/admin/v3/list-users", key="app-user", secret="wrong-secret")
        assert (resp.code, admin_code(content)) == (403, "SignatureDoesNotMatch")
        resp, content = await call(stub, "GET", "/minio/admin/v3/list-users", key="nobody", secret="app-secret-1")
        assert (resp.code, admin_code(content)) == (403, "InvalidAccessKeyId")
        assert set(minio.users) == {"app-user"}

    @in_memory
    async def test_set_user_or_group_policy_replaces_the_set(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-user", "app-secret-1", ["photos"])
        path = "/minio/admin/v3/set-user-or-group-policy?" + urlencode(
            {"policyName": "readonly,no-delete", "userOrGroup": "app-user", "isGroup": "false"})
        resp, content = await call(stub, "PUT", path)
        assert resp.code == 200, content
        assert minio.user_policies("app-user") == ("readonly", "no-delete")
        for policy_name, user, is_group, status, code in [
            ("readonly,absent", "app-user", "false", 404, "XMinioAdminNoSuchPolicy"),
            ("readonly", "nobody", "false", 404, "XMinioAdminNoSuchUser"),
            ("readonly", AK, "false", 403, "XMinioIAMActionNotAllowed"),
            ("readonly", "a-group", "true", 404, "XMinioAdminNoSuchGroup"),
        ]:
            path = "/minio/admin/v3/set-user-or-group-policy?" + urlencode(
                {"policyName": policy_name, "userOrGroup": user, "isGroup": is_group})
            resp, content = await call(stub, "PUT", path)
            assert (resp.code, admin_code(content)) == (status, code), policy_name
        assert minio.user_policies("app-user") == ("readonly", "no-delete")
        resp, content = await call(stub, "PUT", "/minio/admin/v3/set-user-or-group-policy?policyName=readonly"
                                                "&userOrGroup=app-user")
        assert (resp.code, admin_code(content)) == (426, "XMinioAdminVersionMismatch")
        # An empty policyName removes the mapping (PolicyDBSet).
        resp, content = await call(stub, "PUT", "/minio/admin/v3/set-user-or-group-policy?policyName="
                                                "&userOrGroup=app-user&isGroup=false")
        assert resp.code == 200 and minio.user_policies("app-user") == ()
        assert minio.count("set-user-policy") == 7

    @in_memory
    async def test_attach_and_detach_answer_encrypted_and_refuse_like_minio(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-user", "app-secret-1", ["readonly"])
        resp, content = await attach(stub, "attach", "app-user", ["readonly", "no-delete"])
        assert resp.code == 200, content
        answer = json.loads(crypto.decrypt(_Body(content), SK))
        assert answer["policiesAttached"] == ["no-delete"] and answer["updatedAt"]
        assert minio.user_policies("app-user") == ("readonly", "no-delete")
        resp, content = await attach(stub, "attach", "app-user", ["readonly"])
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminPolicyChangeAlreadyApplied")
        resp, content = await attach(stub, "attach", "app-user", ["absent"])
        assert (resp.code, admin_code(content)) == (404, "XMinioAdminNoSuchPolicy")
        resp, content = await attach(stub, "attach", "nobody", ["readonly"])
        assert (resp.code, admin_code(content)) == (404, "XMinioAdminNoSuchUser")
        resp, content = await attach(stub, "attach", "app-user", ["photos"], content_type="application/json")
        assert (resp.code, admin_code(content)) == (400, "BadRequest")
        resp, content = await attach(stub, "attach", "app-user", ["photos"], password="not-root")
        assert (resp.code, admin_code(content)) == (500, "InternalError")
        resp, content = await attach(stub, "attach", "app-user", [])
        assert (resp.code, admin_code(content)) == (500, "InternalError")
        resp, content = await attach(stub, "detach", "app-user", ["readonly", "photos"])
        assert resp.code == 200, content
        assert json.loads(crypto.decrypt(_Body(content), SK))["policiesDetached"] == ["readonly"]
        assert minio.user_policies("app-user") == ("no-delete",)
        resp, content = await attach(stub, "detach", "app-user", ["photos"])
        assert (resp.code, admin_code(content)) == (400, "XMinioAdminPolicyChangeAlreadyApplied")
        assert (minio.count("attach-policy"), minio.count("detach-policy")) == (7, 2)

    @in_memory
    async def test_list_users_and_user_info(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-a", "app-secret-1", ["readonly", "no-delete"])
        minio.add_user("app-b", "app-secret-2", enabled=False)
        resp, content = await call(stub, "GET", "/minio/admin/v3/list-users")
        assert resp.code == 200
        listing = json.loads(crypto.decrypt(_Body(content), SK))
        assert listing["app-a"]["policyName"] == "readonly,no-delete" and listing["app-a"]["status"] == "enabled"
        assert "policyName" not in listing["app-b"] and listing["app-b"]["status"] == "disabled"
        assert not any("secretKey" in v for v in listing.values())
        resp, content = await call(stub, "GET", "/minio/admin/v3/user-info?accessKey=app-a")
        assert resp.code == 200 and json.loads(content)["policyName"] == "readonly,no-delete"
        resp, content = await call(stub, "GET", "/minio/admin/v3/user-info?accessKey=nobody")
        assert (resp.code, admin_code(content)) == (404, "XMinioAdminNoSuchUser")

    @in_memory
    async def test_remove_user_removes_its_credentials(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-a", "app-secret-1", ["readwrite"])
        minio.add_user("app-b", "app-secret-2", ["readwrite"])
        for user, secret in (("app-a", "app-secret-1"), ("app-a", "app-secret-1"), ("app-b", "app-secret-2")):
            resp, content = await assume(stub, user, secret)
            assert resp.code == 200, content
        assert len(minio.live_credentials("app-a")) == 2
        resp, content = await call(stub, "DELETE", "/minio/admin/v3/remove-user?accessKey=app-a")
        assert resp.code == 200, content
        assert "app-a" not in minio.users and minio.live_credentials("app-a") == []
        assert [m.parent for m in minio.live_credentials()] == ["app-b"] and len(minio.minted) == 3
        resp, content = await call(stub, "DELETE", "/minio/admin/v3/remove-user?accessKey=app-a")
        assert (resp.code, admin_code(content)) == (404, "XMinioAdminNoSuchUser")
        resp, content = await call(stub, "DELETE", f"/minio/admin/v3/remove-user?accessKey={AK}")
        assert (resp.code, admin_code(content)) == (403, "XMinioIAMActionNotAllowed")
        temporary = minio.live_credentials()[0].access_key
        resp, content = await call(stub, "DELETE", f"/minio/admin/v3/remove-user?accessKey={temporary}")
        assert (resp.code, admin_code(content)) == (403, "XMinioIAMActionNotAllowed")

    @in_memory
    async def test_faults_cover_the_user_routes(self) -> None:
        minio, stub = self.minio, self.stub
        minio.fail("remove-user", "error", times=1)
        minio.add_user("app-a", "app-secret-1")
        resp, content = await call(stub, "DELETE", "/minio/admin/v3/remove-user?accessKey=app-a")
        assert (resp.code, admin_code(content)) == (500, "InternalError") and "app-a" in minio.users
        resp, content = await call(stub, "DELETE", "/minio/admin/v3/remove-user?accessKey=app-a")
        assert resp.code == 200 and "app-a" not in minio.users
        minio.fail("s3", "500")
        resp, content = await call(stub, "GET", "/bucket/key")
        assert resp.code == 500 and content == b"Internal Server Error\n"
        with self.assertRaises(ValueError):
            minio.fail("no-such-route", "500")

    # -- AssumeRole signed by a user ---------------------------------------------------

    @in_memory
    async def test_a_user_may_assume_a_role_with_or_without_a_session_policy(self) -> None:
        minio, stub = self.minio, self.stub
        minio.add_user("app-user", "app-secret-1", ["readwrite"])
        resp, content = await assume(stub, "app-user", "app-secret-1")
        assert resp.code == 200, content
        resp, content = await assume(stub, "app-user", "app-secret-1", READONLY)
        assert resp.code == 200, content
        first, second = minio.minted
        assert (first.parent, first.policy, second.parent, second.policy) == ("app-user", None, "app-user", READONLY)
        # root still needs a session policy; a temporary credential cannot mint more
        resp, content = await assume(stub, AK, SK)
        assert resp.code == 400 and b"InvalidParameterValue" in content
        key, secret, token = credentials(content=(await assume(stub, "app-user", "app-secret-1"))[1])
        resp, content = await assume(stub, key, secret, token=token)
        assert resp.code == 403 and b"<Code>AccessDenied</Code>" in content
        minio.add_user("app-user", "app-secret-1", ["readwrite"], enabled=False)
        # MinIO's STS answers authentication failures AccessDenied (apiToSTSError)
        resp, content = await assume(stub, "app-user", "app-secret-1")
        assert resp.code == 403 and b"<Code>AccessDenied</Code>" in content and b"disabled" in content
        resp, content = await assume(stub, "app-user", "wrong-secret")
        assert resp.code == 403 and b"<Code>AccessDenied</Code>" in content and b"signature" in content
        resp, content = await assume(stub, "nobody", "app-secret-1")
        assert resp.code == 403 and b"<Code>AccessDenied</Code>" in content and b"Access Key Id" in content
        assert len(minio.minted) == 3

    # -- S3, authorized as MinIO does --------------------------------------------------

    @in_memory
    async def test_s3_is_authorized_by_the_parents_current_policies(self) -> None:
        minio, stub = self.minio, self.stub
        self.photos()
        minio.add_user("app-user", "app-secret-1", ["readwrite", "no-delete"])
        creds = credentials((await assume(stub, "app-user", "app-secret-1"))[1])
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds)
        assert (resp.code, content) == (200, b"jpeg")
        resp, content = await s3(stub, "PUT", "/photos/b.jpg", creds, b"new")
        assert resp.code == 200 and minio.get_object("photos", "b.jpg") == b"new"
        resp, content = await s3(stub, "DELETE", "/photos/b.jpg", creds)
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        assert minio.get_object("photos", "b.jpg") == b"new"
        # a policy change applies to the next call of credentials already issued
        minio.users["app-user"].policies = ("readonly",)
        resp, content = await s3(stub, "PUT", "/photos/c.jpg", creds, b"x")
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds)
        assert resp.code == 200
        # a policy MinIO no longer has grants nothing; no policy at all, nothing
        minio.delete_policy("readonly")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds)
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        minio.users["app-user"].policies = ()
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds)
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        assert minio.s3_outcomes[("s3:GetObject", "AccessDenied")] == 2
        assert minio.s3_outcomes[("s3:GetObject", "OK")] == 2

    @in_memory
    async def test_s3_intersects_the_session_policy(self) -> None:
        minio, stub = self.minio, self.stub
        self.photos()
        minio.add_user("app-user", "app-secret-1", ["readonly"])
        creds = credentials((await assume(stub, "app-user", "app-secret-1", PHOTOS_ONLY))[1])
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds)
        assert resp.code == 200
        resp, content = await s3(stub, "GET", "/docs/a.txt", creds)  # parent allows, session does not
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        resp, content = await s3(stub, "PUT", "/photos/x.jpg", creds, b"x")  # session allows, parent does not
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")
        # root-parented: the session policy alone
        root_creds = credentials((await assume(stub, AK, SK, PHOTOS_ONLY))[1])
        resp, content = await s3(stub, "PUT", "/photos/x.jpg", root_creds, b"x")
        assert resp.code == 200
        resp, content = await s3(stub, "GET", "/docs/a.txt", root_creds)
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")

    @in_memory
    async def test_removed_expired_and_mistokened_credentials_are_refused(self) -> None:
        minio, stub, wall_clock = self.minio, self.stub, self.wall_clock
        self.photos()
        minio.add_user("app-user", "app-secret-1", ["readwrite"])
        key, secret, token = credentials((await assume(stub, "app-user", "app-secret-1"))[1])
        resp, content = await s3(stub, "GET", "/photos/a.jpg", (key, secret, None))
        assert (resp.code, s3_code(content)) == (403, "InvalidTokenId")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", (key, secret, token[:-2] + "xx"))
        assert (resp.code, s3_code(content)) == (403, "InvalidTokenId")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", ("app-user", "app-secret-1", token))
        assert (resp.code, s3_code(content)) == (403, "InvalidTokenId")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", ("app-user", "app-secret-1", None))
        assert resp.code == 200  # the user itself, with its static key
        # expired: MinIO no longer knows the key (it has no ExpiredToken answer)
        wall_clock.advance(600)
        creds = minio.mint("app-user").credentials
        wall_clock.advance(301)
        resp, content = await s3(stub, "GET", "/photos/a.jpg", (key, secret, token), at=wall_clock.seconds())
        assert (resp.code, s3_code(content)) == (403, "InvalidAccessKeyId")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds, at=wall_clock.seconds())
        assert resp.code == 200, content
        assert [m.access_key for m in minio.live_credentials()] == [creds[0]]
        minio.remove_user("app-user")
        resp, content = await s3(stub, "GET", "/photos/a.jpg", creds, at=wall_clock.seconds())
        assert (resp.code, s3_code(content)) == (403, "InvalidAccessKeyId")
        resp = await stub.get(MINIO + "/photos/a.jpg")  # anonymous: no bucket policy allows it
        assert (resp.code, s3_code(await resp.content())) == (403, "AccessDenied")

    @in_memory
    async def test_s3_operations_and_their_errors(self) -> None:
        minio, stub = self.minio, self.stub
        self.photos()
        creds = (AK, SK, None)
        resp, content = await s3(stub, "GET", "/nobucket/a", creds)
        assert (resp.code, s3_code(content)) == (404, "NoSuchBucket")
        resp, content = await s3(stub, "GET", "/photos/absent", creds)
        assert (resp.code, s3_code(content)) == (404, "NoSuchKey")
        resp, content = await s3(stub, "PUT", "/newbucket", creds)
        assert resp.code == 200 and "newbucket" in minio.s3.buckets
        resp, content = await s3(stub, "PUT", "/newbucket", creds)
        assert (resp.code, s3_code(content)) == (409, "BucketAlreadyOwnedByYou")
        resp, content = await s3(stub, "GET", "/photos?tagging", creds)
        assert (resp.code, s3_code(content)) == (501, "NotImplemented")
        for key in ("a/1", "a/2", "b/1", "c"):
            minio.put_object("newbucket", key, b"x")
        resp, content = await s3(stub, "GET", "/newbucket?list-type=2&delimiter=%2F&max-keys=2", creds)
        root = ElementTree.fromstring(content)
        ns = {"s": "http://s3.amazonaws.com/doc/2006-03-01/"}
        assert [p.text for p in root.findall("s:CommonPrefixes/s:Prefix", ns)] == ["a/", "b/"]
        assert root.findtext("s:IsTruncated", namespaces=ns) == "true"
        token = root.findtext("s:NextContinuationToken", namespaces=ns)
        resp, content = await s3(stub, "GET", "/newbucket?" + urlencode(
            {"list-type": "2", "delimiter": "/", "continuation-token": token}), creds)
        root = ElementTree.fromstring(content)
        assert [k.text for k in root.findall("s:Contents/s:Key", ns)] == ["c"]
        assert root.findtext("s:IsTruncated", namespaces=ns) == "false"
        resp, content = await s3(stub, "GET", "/photos?location=", creds)
        assert ElementTree.fromstring(content).text == REGION
        resp, content = await s3(stub, "GET", "/", creds)
        names = [b.text for b in ElementTree.fromstring(content).findall("s:Buckets/s:Bucket/s:Name", ns)]
        assert names == ["docs", "newbucket", "photos"]

    @in_memory
    async def test_list_bucket_conditions_reach_the_evaluator(self) -> None:
        minio, stub = self.minio, self.stub
        self.photos()
        prefix_only = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ["arn:aws:s3:::photos"],
             "Condition": {"StringLike": {"s3:prefix": ["public/*"]}}}]}
        minio.set_policy("prefix-only", prefix_only)
        minio.add_user("app-user", "app-secret-1", ["prefix-only"])
        creds = credentials((await assume(stub, "app-user", "app-secret-1"))[1])
        resp, content = await s3(stub, "GET", "/photos?list-type=2&prefix=public%2F", creds)
        assert resp.code == 200, content
        resp, content = await s3(stub, "GET", "/photos?list-type=2&prefix=private%2F", creds)
        assert (resp.code, s3_code(content)) == (403, "AccessDenied")

# -- real clients on loopback TLS -----------------------------------------------------------


class LoopbackCase(TestCase):
    """
    The fake MinIO behind its router over loopback TLS (served by each test);
    its payload crypto and the clients run in the test's own thread pool.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.pki = TestPKI.create(temporary_directory(self))
        self.pool = ThreadPool(minthreads=0, maxthreads=4, name="test-clients")
        self.pool.start()
        self.addCleanup(self.pool.stop)
        self.in_thread = functools.partial(deferToThreadPool, reactor, self.pool)
        self.minio = FakeMinIO(access_key=AK, secret_key=SK, region=REGION,
                               policies={"readwrite": READWRITE, "no-delete": NO_DELETE},
                               run_in_thread=self.in_thread)
        self.site = Site(FakeMinIORouter({"tenant-1": self.minio}))


class LoopbackClientsTests(LoopbackCase):
    """Real clients (boto3, minio-py) in threads, over loopback TLS."""

    async def test_boto3_uses_minted_credentials_through_the_router(self) -> None:
        pki, minio = self.pki, self.minio
        async with serve_loopback(self.site, pki.server_options()) as listening:
            port = listening.getHost().port  # type: ignore[attr-defined]
            minio.add_user("boto-user", "boto-secret-1", ["readwrite", "no-delete"])
            minio.make_bucket("photos")
            endpoint = f"https://localhost:{port}/tenant-1"
            # Minted on the fake: boto3's STS client signs no x-amz-content-sha256, which the fake demands.
            key, secret, token = minio.mint("boto-user").credentials

            def run():
                import boto3
                from botocore.exceptions import ClientError

                s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION, verify=str(pki.ca_path),
                                  aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token)
                s3.put_object(Bucket="photos", Key="dir/a b.jpg", Body=b"jpeg-bytes")
                got = s3.get_object(Bucket="photos", Key="dir/a b.jpg")["Body"].read()
                head = s3.head_object(Bucket="photos", Key="dir/a b.jpg")["ContentLength"]
                keys = [o["Key"] for o in s3.list_objects_v2(Bucket="photos", Prefix="dir/")["Contents"]]
                try:
                    s3.delete_object(Bucket="photos", Key="dir/a b.jpg")
                    denied = None
                except ClientError as e:
                    denied = e.response["Error"]["Code"]
                return got, head, keys, denied

            got, head, keys, denied = await self.in_thread(run)
            assert (got, head, keys, denied) == (b"jpeg-bytes", 10, ["dir/a b.jpg"], "AccessDenied")
            assert minio.get_object("photos", "dir/a b.jpg") == b"jpeg-bytes"

    async def test_minio_py_uses_minted_credentials_and_loses_them_with_the_user(self) -> None:
        pki, minio = self.pki, self.minio
        async with serve_loopback(self.site, pki.server_options()) as listening:
            port = listening.getHost().port  # type: ignore[attr-defined]
            minio.add_user("py-user", "py-secret-1", ["readwrite"])
            minio.make_bucket("docs")
            key, secret, token = minio.mint("py-user").credentials

            def client():
                import urllib3
                from minio import Minio

                # minio-py allows no path in its endpoint: the router finds the tenant by access key.
                return Minio(f"localhost:{port}", access_key=key, secret_key=secret, session_token=token, secure=True,
                             region=REGION,
                             http_client=urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(pki.ca_path)))

            def use():
                c = client()
                c.put_object("docs", "n.txt", io.BytesIO(b"note"), 4)
                data = c.get_object("docs", "n.txt").read()
                names = [o.object_name for o in c.list_objects("docs")]
                stat = c.stat_object("docs", "n.txt").size
                return data, names, stat

            assert await self.in_thread(use) == (b"note", ["n.txt"], 4)
            minio.remove_user("py-user")

            def refused():
                from minio.error import S3Error

                try:
                    client().get_object("docs", "n.txt")
                except S3Error as e:
                    return e.code
                return None

            assert await self.in_thread(refused) == "InvalidAccessKeyId"
            assert minio.live_credentials("py-user") == []

    async def test_minio_admin_client_manages_users(self) -> None:
        """minio-py's MinioAdmin (MinIO's own admin client) drives the fake's user APIs."""
        pki, minio = self.pki, self.minio
        async with serve_loopback(self.site, pki.server_options()) as listening:
            port = listening.getHost().port  # type: ignore[attr-defined]

            def manage():
                import urllib3
                from minio import MinioAdmin
                from minio.credentials import StaticProvider

                # No path allowed in the endpoint: the router finds the tenant by access key.
                admin = MinioAdmin(endpoint=f"localhost:{port}", credentials=StaticProvider(AK, SK),
                                   region=REGION, http_client=urllib3.PoolManager(
                                       cert_reqs="CERT_REQUIRED", ca_certs=str(pki.ca_path), retries=False))
                admin.user_add("admin-made", "admin-made-secret")
                admin.policy_set("readwrite", user="admin-made")
                attached = json.loads(admin.attach_policy(["no-delete"], user="admin-made"))
                listing = json.loads(admin.user_list())
                info = json.loads(admin.user_info("admin-made"))
                detached = json.loads(admin.detach_policy(["readwrite"], user="admin-made"))
                after = minio.user_policies("admin-made")
                admin.user_remove("admin-made")
                return attached, listing, info, detached, after

            try:
                attached, listing, info, detached, after = await self.in_thread(manage)
            except Exception as e:  # pragma: no cover - names the client's complaint
                raise AssertionError(f"MinioAdmin failed: {e!r}") from None
            assert attached["policiesAttached"] == ["no-delete"]
            assert listing["admin-made"]["policyName"] == "readwrite,no-delete"
            assert info["status"] == "enabled" and detached["policiesDetached"] == ["readwrite"]
            assert after == ("no-delete",) and "admin-made" not in minio.users
            assert minio.count("add-user") >= 1 and minio.count("remove-user") == 1


globals().update(pytest_twisted_functions(LoopbackClientsTests))

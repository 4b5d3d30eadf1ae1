"""The fakes must be strict: each refusal here is one a lenient fake would miss."""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
import time
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree

import jwt
import treq
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from minio.credentials import Credentials as MinioCredentials
from minio.signer import sign_v4_s3, sign_v4_sts
from minio.time import to_amz_date
from treq.testing import StubTreq
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.server import Site

from stsd.testing.fake_kube import FakeKubernetes
from stsd.testing.fake_minio import FakeMinIO, FakeMinIORouter
from stsd.testing.pki import TestPKI
from stsd.testing.tokens import TokenIssuer
from tests._trial import (cases, expand, in_memory, pytest_twisted_functions, serve_loopback,
                          temporary_directory)

T0 = 1_800_000_000.0
CLIENT = "client-token-xyz"
AUTH = {"Authorization": f"Bearer {CLIENT}"}
KUBE = "https://kube.test"
TR = f"{KUBE}/apis/authentication.k8s.io/v1/tokenreviews"
PB = f"{KUBE}/apis/sts.min.io/v1beta1"


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    """One signing key for the module (a 2048-bit key takes a while to make)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class KubernetesCase(SynchronousTestCase):
    """A fake Kubernetes API on a L{Clock} at C{T0}, reached through C{StubTreq}."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.issuer = TokenIssuer(key=rsa_key(), clock=self.clock)
        self.kube = FakeKubernetes(self.issuer, client_token=CLIENT, clock=self.clock)
        self.addCleanup(self.kube.shutdown)
        self.stub = StubTreq(self.kube.resource())


async def review(stub, token, audiences=("sts.min.io",), code=201):
    spec = {"token": token}
    if audiences is not None:
        spec["audiences"] = list(audiences)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
    resp = await stub.post(TR, json.dumps(body).encode(), headers={**AUTH, "Content-Type": "application/json"})
    assert resp.code == code
    return await resp.json()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge_hs256(issuer: TokenIssuer, claims: dict) -> str:
    """The classic alg confusion: HMAC keyed with the RSA public key PEM."""
    pem = issuer.key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


# -- helpers: TokenReview ---------------------------------------------------------


def _bad_tokens():
    def expired(kube, issuer, clock):
        token = kube.token_for("apps", "sa", lifetime=600)
        clock.advance(601)
        return token

    def not_yet_valid(kube, issuer, clock):
        return kube.token_for("apps", "sa", not_before=T0 + 60)

    def wrong_audience(kube, issuer, clock):
        return kube.token_for("apps", "sa", audiences=("minio",))

    def wrong_issuer(kube, issuer, clock):
        return kube.token_for("apps", "sa", iss="https://evil.example")

    def alg_none(kube, issuer, clock):
        claims = jwt.decode(kube.token_for("apps", "sa"), options={"verify_signature": False})
        return jwt.encode(claims, None, algorithm="none")

    def hs256_with_public_key(kube, issuer, clock):
        return _forge_hs256(issuer, jwt.decode(kube.token_for("apps", "sa"), options={"verify_signature": False}))

    def wrong_key(kube, issuer, clock):
        claims = jwt.decode(kube.token_for("apps", "sa"), options={"verify_signature": False})
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(claims, other, algorithm="RS256", headers={"kid": issuer.kid})

    def tampered_claims(kube, issuer, clock):
        head, _, sig = kube.token_for("apps", "sa").split(".")
        claims = jwt.decode(kube.token_for("apps", "sa"), options={"verify_signature": False})
        claims["kubernetes.io"]["namespace"] = "kube-system"
        return f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"

    def deleted_serviceaccount(kube, issuer, clock):
        token = kube.token_for("apps", "sa")
        kube.delete_serviceaccount("apps", "sa")
        return token

    def recreated_serviceaccount(kube, issuer, clock):
        token = kube.token_for("apps", "sa")
        kube.recreate_serviceaccount("apps", "sa")
        return token

    def never_created_serviceaccount(kube, issuer, clock):
        return issuer.mint("apps", "ghost", now=T0)

    def deleted_pod(kube, issuer, clock):
        token = kube.token_for("apps", "sa", pod="web-1")
        kube.delete_pod("apps", "web-1")
        return token

    def sub_mismatch(kube, issuer, clock):
        return kube.token_for("apps", "sa", sub="system:serviceaccount:kube-system:admin")

    def not_a_jwt(kube, issuer, clock):
        return "definitely-not-a-jwt"

    # Each case with the reason it must fail for, so none passes by failing early.
    crypto = "square/go-jose: error in cryptographic primitive"
    return [(expired, "service account token has expired"), (not_yet_valid, "not valid yet"),
            (wrong_audience, 'token audiences ["minio"] is invalid for the target audiences ["sts.min.io"]'),
            (wrong_issuer, "token lookup failed"), (alg_none, crypto), (hs256_with_public_key, crypto),
            (wrong_key, crypto), (tampered_claims, crypto), (deleted_serviceaccount, 'serviceaccounts "sa" not found'),
            (recreated_serviceaccount, "does not match claim"),
            (never_created_serviceaccount, 'serviceaccounts "ghost" not found'),
            (deleted_pod, 'pods "web-1" not found'), (sub_mismatch, "sub does not match"),
            (not_a_jwt, "token lookup failed")]


# -- helpers: watches, faults ---------------------------------------------------------


class _Stream:
    """Collect a streaming watch response in memory, one JSON event per line."""

    def __init__(self, stub, response):
        self._stub, self._buf = stub, b""
        self.events: list[dict] = []
        self.done = treq.collect(response, self._data)
        self.result: list = []
        self.done.addBoth(self.result.append)

    def _data(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        self.events += [json.loads(line) for line in lines if line]

    def pump(self) -> list[dict]:
        self._stub.flush()
        return [(e["type"], e["object"]["metadata"].get("name")) for e in self.events]


async def _watch(stub, url, **params):
    resp = await stub.get(url, params={"watch": "1", **params}, headers=AUTH, unbuffered=True)
    assert resp.code == 200
    return _Stream(stub, resp)


def _outcome(d) -> list:
    """The Deferred's result once it has one (consumed, so no unhandled errors)."""
    box: list = []
    d.addBoth(box.append)
    return box


@expand
class KubernetesTests(KubernetesCase):
    """TokenReview, objects and lists, watches and faults of the fake Kubernetes API."""

    # -- TokenReview -------------------------------------------------------------------

    @in_memory
    async def test_valid_token_is_authenticated(self) -> None:
        kube, stub, issuer = self.kube, self.stub, self.issuer
        token = kube.token_for("apps", "photo-sa")
        doc = await review(stub, token)
        assert doc["kind"] == "TokenReview" and doc["apiVersion"] == "authentication.k8s.io/v1"
        assert doc["metadata"] == {"creationTimestamp": None}
        assert doc["spec"] == {"token": token, "audiences": ["sts.min.io"]}
        st = doc["status"]
        assert st["authenticated"] is True and st["audiences"] == ["sts.min.io"]
        assert st["user"]["username"] == "system:serviceaccount:apps:photo-sa"
        assert st["user"]["uid"] == issuer.uid("apps", "photo-sa")
        assert st["user"]["groups"] == ["system:serviceaccounts", "system:serviceaccounts:apps", "system:authenticated"]
        assert st["user"]["extra"] == {"authentication.kubernetes.io/pod-name": ["pod-1"],
                                       "authentication.kubernetes.io/pod-uid": [issuer.pod_uid("apps", "pod-1")]}
        claims = jwt.decode(token, options={"verify_signature": False})
        assert claims["sub"] == "system:serviceaccount:apps:photo-sa" and claims["aud"] == ["sts.min.io"]
        assert claims["kubernetes.io"]["serviceaccount"]["uid"] == issuer.uid("apps", "photo-sa")
        assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}

    @cases("make,reason", _bad_tokens(), ids=[make.__name__ for make, _ in _bad_tokens()])
    @in_memory
    async def test_bad_tokens_are_not_authenticated(self, make, reason) -> None:
        kube, stub, issuer, clock = self.kube, self.stub, self.issuer, self.clock
        st = (await review(stub, make(kube, issuer, clock)))["status"]
        assert not st.get("authenticated")
        assert st["user"] == {} and "audiences" not in st
        assert st["error"].startswith("[invalid bearer token, ") and reason in st["error"], st["error"]

    @in_memory
    async def test_tokenreview_error_messages_resemble_the_api_server(self) -> None:
        kube, stub, clock = self.kube, self.stub, self.clock
        token = kube.token_for("apps", "sa", lifetime=600)
        clock.advance(601)
        assert (await review(stub, token))["status"]["error"] == \
            "[invalid bearer token, service account token has expired]"
        wrong = kube.token_for("apps", "sa", audiences=("minio",))
        assert "token audiences" in (await review(stub, wrong))["status"]["error"]

    @in_memory
    async def test_recreated_serviceaccount_accepts_new_tokens_only(self) -> None:
        kube, stub = self.kube, self.stub
        old = kube.token_for("apps", "sa")
        kube.recreate_serviceaccount("apps", "sa")
        assert not (await review(stub, old))["status"].get("authenticated")
        assert (await review(stub, kube.token_for("apps", "sa")))["status"]["authenticated"]

    @in_memory
    async def test_token_without_pod_has_no_pod_extra(self) -> None:
        kube, stub = self.kube, self.stub
        st = (await review(stub, kube.token_for("apps", "sa", pod=None)))["status"]
        assert st["authenticated"] and "extra" not in st["user"]

    @in_memory
    async def test_audiences_default_to_the_api_audiences(self) -> None:
        kube, stub = self.kube, self.stub
        api_token = kube.token_for("apps", "sa", audiences=("https://kubernetes.default.svc.cluster.local",))
        st = (await review(stub, api_token, audiences=None))["status"]
        assert st["authenticated"] and st["audiences"] == ["https://kubernetes.default.svc.cluster.local"]
        assert not (await review(stub, kube.token_for("apps", "sa"), audiences=None))["status"].get("authenticated")

    @in_memory
    async def test_rotated_signing_key_keeps_old_tokens_valid_and_publishes_both(self) -> None:
        kube, stub, issuer = self.kube, self.stub, self.issuer
        old = kube.token_for("apps", "sa")
        issuer.rotate_key()
        new = kube.token_for("apps", "sa")
        assert jwt.get_unverified_header(old)["kid"] != jwt.get_unverified_header(new)["kid"]
        for token in (old, new):
            assert (await review(stub, token))["status"]["authenticated"]
        assert len(issuer.jwks()["keys"]) == 2

    @in_memory
    async def test_static_token_authenticates_a_non_serviceaccount_user(self) -> None:
        kube, stub = self.kube, self.stub
        kube.add_static_token("opaque-oidc-token", "oidc:alice", ["devs"])
        st = (await review(stub, "opaque-oidc-token"))["status"]
        assert st["authenticated"] and st["audiences"] == ["sts.min.io"]
        assert st["user"] == {"username": "oidc:alice", "groups": ["devs", "system:authenticated"]}

    @cases("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {CLIENT}"},
                                         {"Authorization": "Bearer "}])
    @in_memory
    async def test_requests_without_the_client_token_get_401(self, headers) -> None:
        stub = self.stub
        resp = await stub.get(f"{PB}/policybindings", headers=headers)
        assert resp.code == 401
        assert await resp.json() == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                     "message": "Unauthorized", "reason": "Unauthorized", "code": 401}

    @cases("body,content_type,code", [
        (b"not json", "application/json", 400),
        (json.dumps({"apiVersion": "v1", "kind": "TokenReview", "spec": {"token": "x"}}).encode(), "application/json", 400),
        (json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}}).encode(),
         "application/json", 400),
        (json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "spec": {"token": "x", "audiences": "sts.min.io"}}).encode(), "application/json", 400),
        (json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "x"}}).encode(),
         "text/plain", 415),
    ])
    @in_memory
    async def test_malformed_tokenreviews_are_refused(self, body, content_type, code) -> None:
        stub = self.stub
        resp = await stub.post(TR, body, headers={**AUTH, "Content-Type": content_type})
        assert resp.code == code
        assert (await resp.json())["kind"] == "Status"

    @in_memory
    async def test_unknown_path_404_and_wrong_method_405(self) -> None:
        stub = self.stub
        resp = await stub.get(f"{KUBE}/apis/sts.min.io/v1alpha9/policybindings", headers=AUTH)
        assert resp.code == 404 and (await resp.json())["reason"] == "NotFound"
        resp = await stub.get(TR, headers=AUTH)
        assert resp.code == 405 and (await resp.json())["reason"] == "MethodNotAllowed"
        resp = await stub.delete(f"{PB}/policybindings", headers=AUTH)
        assert resp.code == 405

    @in_memory
    async def test_requests_are_recorded_without_leaking_tokens(self) -> None:
        kube, stub = self.kube, self.stub
        token = kube.token_for("apps", "sa")
        await review(stub, token)
        await stub.get(f"{PB}/policybindings", params={"limit": "5"}, headers=AUTH)
        assert kube.count("/apis/authentication.k8s.io/") == 1 and kube.count("/apis/sts.min.io/") == 1
        first, second = kube.requests
        assert first.method == "POST" and token.encode() in first.body
        assert token not in repr(kube.requests) and CLIENT not in repr(kube.requests)
        assert second.query == {"limit": "5"} and second.body is None

    @in_memory
    async def test_discovery_documents_verify_minted_tokens(self) -> None:
        kube, stub, issuer = self.kube, self.stub, self.issuer
        resp = await stub.get(f"{KUBE}/.well-known/openid-configuration", headers=AUTH)
        config = await resp.json()
        assert config["issuer"] == issuer.issuer and config["jwks_uri"].endswith("/openid/v1/jwks")
        jwks = await (await stub.get(f"{KUBE}/openid/v1/jwks", headers=AUTH)).json()
        key = jwt.PyJWK(jwks["keys"][0]).key
        claims = jwt.decode(kube.token_for("apps", "sa"), key, algorithms=["RS256"], audience="sts.min.io",
                            issuer=issuer.issuer, options={"verify_exp": False, "verify_iat": False,
                                                           "verify_nbf": False})
        assert claims["sub"] == "system:serviceaccount:apps:sa"

    # -- objects and lists -------------------------------------------------------------

    @in_memory
    async def test_lists_carry_resource_versions(self) -> None:
        kube, stub = self.kube, self.stub
        a = kube.add_policybinding("tenant-1", "pb-a", app_namespace="apps", serviceaccount="sa", policies=["readonly"])
        kube.add_policybinding("tenant-2", "pb-b", app_namespace="apps", serviceaccount="sa", policies=["rw"])
        assert a["metadata"]["resourceVersion"] == "1" and a["metadata"]["namespace"] == "tenant-1"
        doc = await (await stub.get(f"{PB}/policybindings", headers=AUTH)).json()
        assert doc["kind"] == "PolicyBindingList" and doc["apiVersion"] == "sts.min.io/v1beta1"
        assert doc["metadata"]["resourceVersion"] == "2"
        assert [i["metadata"]["name"] for i in doc["items"]] == ["pb-a", "pb-b"]
        item = doc["items"][0]
        assert item["kind"] == "PolicyBinding" and item["apiVersion"] == "sts.min.io/v1beta1"
        assert item["spec"] == {"application": {"namespace": "apps", "serviceaccount": "sa"}, "policies": ["readonly"]}
        assert item["metadata"]["creationTimestamp"] == "2027-01-15T08:00:00Z" and item["metadata"]["uid"]
        doc = await (await stub.get(f"{PB}/namespaces/tenant-2/policybindings", headers=AUTH)).json()
        assert [i["metadata"]["name"] for i in doc["items"]] == ["pb-b"]
        kube.update_policybinding("tenant-1", "pb-a", policies=["readwrite"])
        doc = await (await stub.get(f"{PB}/namespaces/tenant-1/policybindings", headers=AUTH)).json()
        assert doc["metadata"]["resourceVersion"] == "3" and doc["items"][0]["spec"]["policies"] == ["readwrite"]
        assert doc["items"][0]["metadata"]["uid"] == a["metadata"]["uid"]

    @in_memory
    async def test_list_pagination_with_continue(self) -> None:
        kube, stub = self.kube, self.stub
        for i in range(5):
            kube.add_policybinding("t", f"pb-{i}", app_namespace="apps", serviceaccount="sa", policies=["p"])
        names, params = [], {"limit": "2"}
        while True:
            doc = await (await stub.get(f"{PB}/policybindings", params=params, headers=AUTH)).json()
            names += [i["metadata"]["name"] for i in doc["items"]]
            if "continue" not in doc["metadata"]:
                break
            params = {"limit": "2", "continue": doc["metadata"]["continue"]}
        assert names == [f"pb-{i}" for i in range(5)]

    @in_memory
    async def test_tenants_and_secrets(self) -> None:
        kube, stub = self.kube, self.stub
        kube.add_tenant("tenant-1", "myminio", configuration_secret="myminio-env", request_auto_cert=False)
        kube.config_env_secret("tenant-1", "myminio-env", "root", "rootpass123")
        doc = await (await stub.get(f"{KUBE}/apis/minio.min.io/v2/namespaces/tenant-1/tenants", headers=AUTH)).json()
        assert doc["kind"] == "TenantList"
        spec = doc["items"][0]["spec"]
        assert spec["configuration"] == {"name": "myminio-env"} and spec["requestAutoCert"] is False
        assert "externalCertSecret" not in spec and spec["pools"][0]["servers"] == 1
        resp = await stub.get(f"{KUBE}/api/v1/namespaces/tenant-1/secrets/myminio-env", headers=AUTH)
        secret = await resp.json()
        assert secret["kind"] == "Secret" and secret["apiVersion"] == "v1"
        assert base64.b64decode(secret["data"]["config.env"]) == \
            b'export MINIO_ROOT_USER="root"\nexport MINIO_ROOT_PASSWORD="rootpass123"\n'
        resp = await stub.get(f"{KUBE}/api/v1/namespaces/tenant-1/secrets/absent", headers=AUTH)
        assert resp.code == 404
        assert (await resp.json())["message"] == 'secrets "absent" not found'
        doc = await (await stub.get(f"{KUBE}/api/v1/secrets", headers=AUTH)).json()
        assert doc["kind"] == "SecretList" and "kind" not in doc["items"][0]  # like the real built-in lists
        doc = await (await stub.get(f"{KUBE}/api/v1/secrets", params={"fieldSelector": "metadata.name=nope"},
                                    headers=AUTH)).json()
        assert doc["items"] == []
        resp = await stub.get(f"{KUBE}/api/v1/secrets", params={"labelSelector": "a=b"}, headers=AUTH)
        assert resp.code == 400

    # -- watches -----------------------------------------------------------------------

    @in_memory
    async def test_watch_delivers_events_in_order_with_bookmarks(self) -> None:
        kube, stub = self.kube, self.stub
        kube.add_policybinding("t", "before", app_namespace="apps", serviceaccount="sa", policies=["p"])
        rv = (await (await stub.get(f"{PB}/policybindings", headers=AUTH)).json())["metadata"]["resourceVersion"]
        stream = await _watch(stub, f"{PB}/policybindings", resourceVersion=rv, allowWatchBookmarks="true")
        plain = await _watch(stub, f"{PB}/namespaces/other/policybindings", resourceVersion=rv)
        assert stream.pump() == [] and kube.open_watches == 2
        kube.add_policybinding("t", "pb", app_namespace="apps", serviceaccount="sa", policies=["p"])
        kube.update_policybinding("t", "pb", policies=["q"])
        kube.add_tenant("t", "myminio", configuration_secret="env")  # another kind: not on this stream
        kube.delete_policybinding("t", "pb")
        kube.send_bookmark()
        assert stream.pump() == [("ADDED", "pb"), ("MODIFIED", "pb"), ("DELETED", "pb"), ("BOOKMARK", None)]
        versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in stream.events]
        assert versions == sorted(versions) and versions[-1] == kube.resource_version
        assert stream.events[1]["object"]["spec"]["policies"] == ["q"]
        assert stream.events[0]["object"]["kind"] == "PolicyBinding"
        assert plain.pump() == []  # other namespace, and no bookmarks requested
        kube.cut_watches()
        stream.pump()
        assert len(stream.result) == 1 and isinstance(stream.result[0], Failure), "a cut must fail the stream"
        assert kube.open_watches == 0

    @in_memory
    async def test_watch_replays_history_after_the_given_version(self) -> None:
        kube, stub = self.kube, self.stub
        kube.add_policybinding("t", "a", app_namespace="apps", serviceaccount="sa", policies=["p"])
        kube.add_policybinding("t", "b", app_namespace="apps", serviceaccount="sa", policies=["p"])
        kube.delete_policybinding("t", "a")
        stream = await _watch(stub, f"{PB}/policybindings", resourceVersion="1")
        assert stream.pump() == [("ADDED", "b"), ("DELETED", "a")]
        fresh = await _watch(stub, f"{PB}/policybindings")  # no version: current state as ADDED
        assert fresh.pump() == [("ADDED", "b")]

    @in_memory
    async def test_watch_from_compacted_version_gets_410(self) -> None:
        kube, stub = self.kube, self.stub
        kube.add_policybinding("t", "a", app_namespace="apps", serviceaccount="sa", policies=["p"])
        kube.add_policybinding("t", "b", app_namespace="apps", serviceaccount="sa", policies=["p"])
        kube.compact_history()
        stream = await _watch(stub, f"{PB}/policybindings", resourceVersion="1")
        stream.pump()
        assert [e["type"] for e in stream.events] == ["ERROR"]
        err = stream.events[0]["object"]
        assert err["kind"] == "Status" and err["code"] == 410 and err["reason"] == "Expired"
        assert stream.result == [None]  # the stream ended cleanly
        current = await _watch(stub, f"{PB}/policybindings", resourceVersion=str(kube.resource_version))
        kube.delete_policybinding("t", "a")
        assert current.pump() == [("DELETED", "a")]

    @in_memory
    async def test_watch_honours_timeout_seconds_on_the_injected_clock(self) -> None:
        kube, stub, clock = self.kube, self.stub, self.clock
        stream = await _watch(stub, f"{KUBE}/api/v1/namespaces/t/secrets", resourceVersion="0", timeoutSeconds="30")
        kube.add_secret("t", "s", {"k": b"v"})
        assert stream.pump() == [("ADDED", "s")]
        assert stream.events[0]["object"]["kind"] == "Secret"
        clock.advance(29)
        stream.pump()
        assert stream.result == []
        clock.advance(1)
        stream.pump()
        assert stream.result == [None] and kube.open_watches == 0

    # -- faults ------------------------------------------------------------------------

    @in_memory
    async def test_fault_500_then_recovers(self) -> None:
        kube, stub = self.kube, self.stub
        kube.fail("/apis/sts.min.io/", "500", times=2)
        for _ in range(2):
            resp = await stub.get(f"{PB}/policybindings", headers=AUTH)
            assert resp.code == 500 and (await resp.json())["reason"] == "InternalError"
        assert (await stub.get(f"{PB}/policybindings", headers=AUTH)).code == 200
        assert kube.count("/apis/sts.min.io/") == 3

    @in_memory
    async def test_fault_close_drops_the_connection(self) -> None:
        kube, stub = self.kube, self.stub
        kube.fail("/apis/authentication.k8s.io/", "close")
        d = stub.post(TR, b"{}", headers={**AUTH, "Content-Type": "application/json"})
        stub.flush()
        with self.assertRaises(Exception):
            await d

    @in_memory
    async def test_fault_hang_holds_the_request_until_cleared(self) -> None:
        kube, stub = self.kube, self.stub
        kube.fail("/apis/authentication.k8s.io/", "hang")
        outcome = _outcome(stub.post(TR, b"{}", headers={**AUTH, "Content-Type": "application/json"}))
        stub.flush()
        assert outcome == [] and kube.hung == 1
        kube.clear_faults()
        stub.flush()
        assert len(outcome) == 1 and isinstance(outcome[0], Failure)
        assert kube.hung == 0
        assert (await review(stub, kube.token_for("apps", "sa")))["status"]["authenticated"]

    @in_memory
    async def test_hung_request_is_forgotten_when_the_client_goes_away(self) -> None:
        kube, stub = self.kube, self.stub
        kube.fail("/apis/sts.min.io/", "hang")
        d = stub.get(f"{PB}/policybindings", headers=AUTH)
        stub.flush()
        assert kube.hung == 1
        d.cancel()
        stub.flush()
        with self.assertRaises(ResponseNeverReceived):
            await d
        assert kube.hung == 0

# -- a real TLS socket -------------------------------------------------------------------


def _tls_agent(pki: TestPKI):
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

    policy = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(pki.ca_pem))
    return Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))


class LoopbackTLSTests(KubernetesCase, TestCase):
    """The fake Kubernetes API over a real TLS socket (the global reactor)."""

    async def test_watch_over_loopback_tls(self) -> None:
        from OpenSSL import SSL

        kube = self.kube
        pki = TestPKI.create(temporary_directory(self))
        assert pki.cert_path.read_bytes().count(b"BEGIN CERTIFICATE") == 1
        no_old = SSL.OP_NO_TLSv1 | SSL.OP_NO_TLSv1_1  # pyOpenSSL has no getter: Twisted's flags
        assert pki.server_options()._options & no_old == no_old
        assert b"BEGIN PRIVATE KEY" in pki.key_path.read_bytes()

        async with serve_loopback(Site(kube.resource()), pki.server_options()) as port:
            try:
                url = f"https://127.0.0.1:{port.getHost().port}/apis/sts.min.io/v1beta1/policybindings"  # type: ignore[attr-defined]
                agent = _tls_agent(pki)
                resp = await treq.get(url, params={"watch": "1", "resourceVersion": "0"}, headers=AUTH,
                                      agent=agent, unbuffered=True)
                assert resp.code == 200
                got: list[bytes] = []
                arrived: defer.Deferred[None] = defer.Deferred()

                def data(chunk: bytes) -> None:
                    got.append(chunk)
                    if b"\n" in b"".join(got) and not arrived.called:
                        arrived.callback(None)

                done = treq.collect(resp, data)
                kube.add_policybinding("t", "pb", app_namespace="apps", serviceaccount="sa", policies=["p"])
                await arrived
                assert json.loads(b"".join(got))["type"] == "ADDED"
                kube.cut_watches()
                with self.assertRaises(Exception):
                    await done
            finally:
                kube.shutdown()

    async def test_tls_client_refuses_a_certificate_for_another_host(self) -> None:
        from cryptography import x509
        from twisted.internet.ssl import CertificateOptions

        kube = self.kube
        pki = TestPKI.create(temporary_directory(self))
        cert_pem, key_pem = pki.issue(["wrong.example"])
        options = CertificateOptions(privateKey=serialization.load_pem_private_key(key_pem, None),
                                     certificate=x509.load_pem_x509_certificate(cert_pem))

        async with serve_loopback(Site(kube.resource()), options) as port:
            with self.assertRaises(Exception):
                await treq.get(f"https://127.0.0.1:{port.getHost().port}/openid/v1/jwks",  # type: ignore[attr-defined]
                               headers=AUTH, agent=_tls_agent(pki))
            assert kube.requests == []


# -- MinIO -----------------------------------------------------------------------------

AK, SK = "rootuser", "rootpass/with+chars"
MINIO = "https://minio.test"
READONLY = {"Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::photos/*"]}]}


class MinIOCase(SynchronousTestCase):
    """A fake MinIO reached through C{StubTreq}, on a L{Clock} at the wall-clock time."""

    def setUp(self) -> None:
        # SigV4 signers use the real time, so the fake's clock starts there.
        self.wall_clock = Clock()
        self.wall_clock.advance(time.time())
        self.minio = FakeMinIO(access_key=AK, secret_key=SK, region="eu-central-1", clock=self.wall_clock,
                               policies={"readonly": READONLY})
        self.addCleanup(self.minio.shutdown)
        self.mstub = StubTreq(self.minio.resource())


def boto_signed(method, url, body=b"", *, service, region, key=AK, secret=SK, content_type=None,
                content_sha=True):
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if content_sha:
        headers["X-Amz-Content-SHA256"] = hashlib.sha256(body).hexdigest()
    req = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(BotoCredentials(key, secret), service, region).add_auth(req)
    return dict(req.headers.items())


async def send(stub, method, url, body, headers):
    resp = await stub.request(method, url, data=body or None, headers=headers)
    return resp, await resp.content()


def sts_body(**overrides):
    form = {"Action": "AssumeRole", "Version": "2011-06-15", "DurationSeconds": "3600",
            "Policy": json.dumps(READONLY)}
    form.update(overrides)
    return urlencode({k: v for k, v in form.items() if v is not None}).encode()


async def assume(stub, body, *, region="eu-central-1", url=f"{MINIO}/", **kw):
    headers = boto_signed("POST", url, body, service="sts", region=region,
                          content_type="application/x-www-form-urlencoded", **kw)
    return await send(stub, "POST", url, body, headers)


def sts_error(content: bytes) -> str:
    root = ElementTree.fromstring(content)
    ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
    assert root.tag == "{https://sts.amazonaws.com/doc/2011-06-15/}ErrorResponse"
    assert root.findtext("s:RequestId", namespaces=ns)
    return root.findtext("s:Error/s:Code", namespaces=ns)


def _tampered(minio, mstub):
    body = sts_body()
    headers = boto_signed("POST", f"{MINIO}/", body, service="sts", region="eu-central-1",
                          content_type="application/x-www-form-urlencoded")
    return send(mstub, "POST", f"{MINIO}/", sts_body(DurationSeconds="3601"), headers)


def _tampered_with_matching_hash(minio, mstub):
    body = sts_body()
    headers = boto_signed("POST", f"{MINIO}/", body, service="sts", region="eu-central-1",
                          content_type="application/x-www-form-urlencoded")
    evil = sts_body(Policy=json.dumps({**READONLY, "Statement": [{**READONLY["Statement"][0],
                                                                  "Resource": ["arn:aws:s3:::*"]}]}))
    headers["X-Amz-Content-SHA256"] = hashlib.sha256(evil).hexdigest()
    return send(mstub, "POST", f"{MINIO}/", evil, headers)


def _stale(minio, mstub):
    minio.clock.advance(15 * 60 + 1)
    return assume(mstub, sts_body())


def _policy_of(size: int) -> str:
    doc = {**READONLY, "Statement": [{"Sid": "", **READONLY["Statement"][0]}]}
    base = len(json.dumps(doc))
    doc["Statement"][0]["Sid"] = "x" * (size - base)
    text = json.dumps(doc)
    assert len(text) == size
    return text


# MinIO's STS answers every authentication failure AccessDenied 403, with the
# description of the S3 error behind it (apiToSTSError, cmd/sts-handlers.go).


@expand
class MinIOTests(MinIOCase):
    """The fake MinIO's STS and admin APIs, signed by botocore and by the minio package."""

    @in_memory
    async def test_assume_role_signed_by_botocore_is_accepted(self) -> None:
        minio, mstub, wall_clock = self.minio, self.mstub, self.wall_clock
        resp, content = await assume(mstub, sts_body(DurationSeconds="900"))
        assert resp.code == 200, content
        assert resp.headers.getRawHeaders("content-type") == ["text/xml"]
        root = ElementTree.fromstring(content)
        ns = {"s": "https://sts.amazonaws.com/doc/2011-06-15/"}
        creds = root.find("s:AssumeRoleResult/s:Credentials", ns)
        (minted,) = minio.minted
        assert creds.findtext("s:AccessKeyId", namespaces=ns) == minted.access_key and len(minted.access_key) == 20
        assert creds.findtext("s:SecretAccessKey", namespaces=ns) == minted.secret_key and len(minted.secret_key) == 40
        assert creds.findtext("s:SessionToken", namespaces=ns) == minted.session_token
        expiration = creds.findtext("s:Expiration", namespaces=ns)
        assert expiration == minted.expiration.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert minted.expiration.timestamp() == int(wall_clock.seconds()) + 900
        assert root.findtext("s:ResponseMetadata/s:RequestId", namespaces=ns) == \
            resp.headers.getRawHeaders("x-amz-request-id")[0]
        assert minted.policy == READONLY and minted.duration == 900
        assert minted.secret_key not in repr(minted) and minted.session_token not in repr(minted)
        assert minio.count("assumerole") == 1

    @in_memory
    async def test_assume_role_signed_by_the_minio_package_is_accepted(self) -> None:
        minio, mstub, wall_clock = self.minio, self.mstub, self.wall_clock
        url = f"{MINIO}/"
        body = sts_body()
        sha = hashlib.sha256(body).hexdigest()
        now = datetime.datetime.fromtimestamp(wall_clock.seconds(), datetime.timezone.utc)
        headers = sign_v4_sts(method="POST", url=urlsplit(url), region="eu-central-1",
                              headers={"Content-Type": "application/x-www-form-urlencoded", "Host": "minio.test",
                                       "X-Amz-Date": to_amz_date(now), "X-Amz-Content-Sha256": sha},
                              credentials=MinioCredentials(AK, SK), content_sha256=sha, date=now)
        resp, content = await send(mstub, "POST", url, body, headers)
        assert resp.code == 200, content
        # Strict beyond MinIO: the payload hash header must be sent and signed.
        headers = sign_v4_sts(method="POST", url=urlsplit(url), region="eu-central-1",
                              headers={"Content-Type": "application/x-www-form-urlencoded", "Host": "minio.test",
                                       "X-Amz-Date": to_amz_date(now)},
                              credentials=MinioCredentials(AK, SK), content_sha256=sha, date=now)
        resp, content = await send(mstub, "POST", url, body, headers)
        assert resp.code == 403 and sts_error(content) == "AccessDenied"

    @in_memory
    async def test_admin_requests_signed_by_the_minio_package_are_accepted(self) -> None:
        mstub, wall_clock = self.mstub, self.wall_clock
        url = f"{MINIO}/minio/admin/v3/info-canned-policy?name=readonly&v=2"
        now = datetime.datetime.fromtimestamp(wall_clock.seconds(), datetime.timezone.utc)
        sha = hashlib.sha256(b"").hexdigest()
        headers = sign_v4_s3(method="GET", url=urlsplit(url), region="us-east-1",
                             headers={"Host": "minio.test", "X-Amz-Date": to_amz_date(now), "X-Amz-Content-Sha256": sha},
                             credentials=MinioCredentials(AK, SK), content_sha256=sha, date=now)
        resp, content = await send(mstub, "GET", url, b"", headers)
        assert resp.code == 200, content
        doc = json.loads(content)
        assert doc["PolicyName"] == "readonly" and doc["Policy"] == READONLY
        assert doc["CreateDate"].endswith("Z") and doc["UpdateDate"].endswith("Z")

    @cases("attempt,code,status", [
        (_tampered, "AccessDenied:The provided 'x-amz-content-sha256' header does not match", 403),
        (_tampered_with_matching_hash, "AccessDenied:The request signature we calculated does not match", 403),
        (lambda m, s: assume(s, sts_body(), secret="wrong-secret"),
         "AccessDenied:The request signature we calculated does not match", 403),
        (lambda m, s: assume(s, sts_body(), key="someone-else"),
         "AccessDenied:The Access Key Id you provided does not exist", 403),
        (lambda m, s: assume(s, sts_body(), region="us-east-1"), "AccessDenied:the region is wrong", 403),
        (_stale, "AccessDenied:The difference between the request time and the server's time is too large", 403),
        (lambda m, s: assume(s, sts_body(), content_sha=False), "AccessDenied:There were headers present", 403),
        (lambda m, s: send(s, "POST", f"{MINIO}/", sts_body(), {"Content-Type": "application/x-www-form-urlencoded"}),
         "AccessDenied", 403),
        (lambda m, s: assume(s, sts_body(Policy=None)), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(Policy="")), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(Policy=_policy_of(2049))), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(DurationSeconds="899")), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(DurationSeconds="43201")), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(DurationSeconds="1h")), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, sts_body(Policy="{not json")), "MalformedPolicyDocument", 400),
        (lambda m, s: assume(s, sts_body(Policy=json.dumps({**READONLY, "Version": ""}))), "MalformedPolicyDocument", 400),
        (lambda m, s: assume(s, sts_body(Policy=json.dumps({**READONLY, "Extra": 1}))), "MalformedPolicyDocument", 400),
        (lambda m, s: assume(s, sts_body(Policy=json.dumps({**READONLY, "Statement": [
            {**READONLY["Statement"][0], "Resource": ["photos/*"]}]}))), "MalformedPolicyDocument", 400),
        (lambda m, s: assume(s, sts_body(Version="2010-01-01")), "MissingParameter", 400),
        (lambda m, s: assume(s, sts_body(Action="AssumeRoleWithWebIdentity")), "InvalidParameterValue", 400),
        (lambda m, s: assume(s, b"", url=f"{MINIO}/?Action=AssumeRole&Version=2011-06-15"), "InvalidParameterValue", 400),
    ], ids=["tampered-body", "tampered-body-and-hash", "wrong-secret", "wrong-access-key", "wrong-region", "stale-date",
            "unsigned-payload-hash", "unsigned", "missing-policy", "empty-policy", "policy-2049-bytes", "duration-899",
            "duration-43201", "duration-not-int", "policy-not-json", "policy-no-version", "policy-unknown-field",
            "policy-resource-not-an-arn",
            "wrong-version", "wrong-action", "params-in-query"])
    @in_memory
    async def test_assume_role_refusals(self, attempt, code, status) -> None:
        minio, mstub = self.minio, self.mstub
        resp, content = await attempt(minio, mstub)
        code, _, message = code.partition(":")
        assert (resp.code, sts_error(content)) == (status, code), content
        assert message.encode() in content.replace(b"&apos;", b"'"), content
        assert minio.minted == []

    @cases("overrides", [{"DurationSeconds": "900"}, {"DurationSeconds": "43200"},
                                           {"DurationSeconds": None}, {"Policy": _policy_of(2048)}])
    @in_memory
    async def test_assume_role_boundaries_accepted(self, overrides) -> None:
        minio, mstub = self.minio, self.mstub
        resp, content = await assume(mstub, sts_body(**overrides))
        assert resp.code == 200, content
        assert minio.minted[0].duration == int(overrides.get("DurationSeconds") or 3600)

    @cases("region", ["us-east-1", "eu-central-1", "xx-nowhere-9"])
    @in_memory
    async def test_admin_info_accepts_any_region(self, region) -> None:
        minio, mstub = self.minio, self.mstub
        url = f"{MINIO}/minio/admin/v3/info"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region=region))
        assert resp.code == 200, content
        info = json.loads(content)
        assert info["region"] == "eu-central-1" and info["mode"] == "online" and info["deploymentID"]
        minio.set_region("ap-south-1")
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region=region))
        assert json.loads(content)["region"] == "ap-south-1" and minio.count("info") == 2

    @in_memory
    async def test_admin_errors_are_minio_json(self) -> None:
        minio, mstub = self.minio, self.mstub
        url = f"{MINIO}/minio/admin/v3/info"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x",
                                                                       secret="nope"))
        assert resp.code == 403
        err = json.loads(content)
        assert err["Code"] == "SignatureDoesNotMatch" and err["Resource"] == "/minio/admin/v3/info" and err["RequestId"]
        # signed for sts but sent to the admin API
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="sts", region="x"))
        assert resp.code == 400 and json.loads(content)["Code"] == "AuthorizationParametersError"
        url = f"{MINIO}/minio/admin/v3/info-canned-policy?name=absent&v=2"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        assert resp.code == 404
        assert json.loads(content)["Code"] == "XMinioAdminNoSuchPolicy"
        assert json.loads(content)["Message"] == "The canned policy does not exist."

    @in_memory
    async def test_policies_are_served_verbatim(self) -> None:
        minio, mstub = self.minio, self.mstub
        minio.set_policy("broken", '{"Version": "2012-10-17", "Statement": [')
        minio.set_policy("spaced", '{ "Version" : "2012-10-17", "Statement" : [] }')
        url = f"{MINIO}/minio/admin/v3/info-canned-policy?name=broken&v=2"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        assert resp.code == 200 and b'"Policy":{"Version": "2012-10-17", "Statement": [,' in content
        url = f"{MINIO}/minio/admin/v3/info-canned-policy?name=spaced&v=2"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        assert json.loads(content)["Policy"] == {"Version": "2012-10-17", "Statement": []}
        minio.delete_policy("spaced")
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        assert resp.code == 404 and minio.count("policy") == 3

    @in_memory
    async def test_minio_faults(self) -> None:
        minio, mstub = self.minio, self.mstub
        minio.fail("assumerole", "error", times=1)
        resp, content = await assume(mstub, sts_body())
        assert resp.code == 500 and sts_error(content) == "InternalError"
        resp, content = await assume(mstub, sts_body())
        assert resp.code == 200
        minio.fail("info", "500")
        url = f"{MINIO}/minio/admin/v3/info"
        resp, content = await send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        assert resp.code == 500 and not content.startswith(b"{")
        minio.fail("info", "close")
        d = send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))
        mstub.flush()
        with self.assertRaises(Exception):
            await d
        minio.fail("policy", "hang")
        url = f"{MINIO}/minio/admin/v3/info-canned-policy?name=readonly&v=2"
        outcome = _outcome(defer.ensureDeferred(
            send(mstub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x"))))
        mstub.flush()
        assert outcome == [] and minio.hung == 1
        minio.clear_faults()
        mstub.flush()
        assert len(outcome) == 1 and isinstance(outcome[0], Failure)
        assert minio.hung == 0 and len(minio.minted) == 1

    @in_memory
    async def test_router_selects_the_tenant_by_first_path_segment(self) -> None:
        wall_clock = self.wall_clock
        one = FakeMinIO(access_key="ak1", secret_key="sk1", region="r1", clock=wall_clock)
        two = FakeMinIO(access_key="ak2", secret_key="sk2", region="r2", clock=wall_clock)
        router = FakeMinIORouter({"tenant-1": one})
        router.add("tenant-2", two)
        stub = StubTreq(router)
        url = f"{MINIO}/tenant-1/minio/admin/v3/info"
        resp, content = await send(stub, "GET", url, b"", boto_signed("GET", url, service="s3", region="x",
                                                                      key="ak1", secret="sk1"))
        assert resp.code == 200 and json.loads(content)["region"] == "r1"
        # signed over the path without the prefix: refused
        headers = boto_signed("GET", f"{MINIO}/minio/admin/v3/info", service="s3", region="x", key="ak1", secret="sk1")
        resp, content = await send(stub, "GET", url, b"", headers)
        assert resp.code == 403 and json.loads(content)["Code"] == "SignatureDoesNotMatch"
        for url in (f"{MINIO}/tenant-2/", f"{MINIO}/tenant-2"):
            resp, content = await assume(stub, sts_body(), region="r2", url=url, key="ak2", secret="sk2")
            assert resp.code == 200, content
        resp, content = await assume(stub, sts_body(), region="r1", url=f"{MINIO}/tenant-1/", key="ak2", secret="sk2")
        assert resp.code == 403 and sts_error(content) == "AccessDenied" and b"Access Key Id" in content
        resp, content = await send(stub, "GET", f"{MINIO}/tenant-3/minio/admin/v3/info", b"", {})
        assert resp.code == 404
        assert (one.count("info"), len(one.minted), len(two.minted)) == (2, 0, 2)


globals().update(pytest_twisted_functions(LoopbackTLSTests))

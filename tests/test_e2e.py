"""
End to end: the daemon as a real C{twistd} process on loopback TLS, driven
by boto3, minio-py and raw HTTP, against the strict fakes (RS256 tokens
reviewed by the fake API server, SigV4 and regions checked by fake MinIO).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode
from xml.etree import ElementTree

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from stsd.http import wire
from stsd.testing.world import Daemon, World
from tests._trial import pytest_only

NS = {"sts": wire.STS_NAMESPACE}
ROLE = "arn:aws:iam::000000000000:role/app"


@dataclass
class Answer:
    status: int
    headers: Mapping[str, list[str]]
    body: bytes
    seconds: float

    @property
    def xml(self) -> ElementTree.Element:
        return ElementTree.fromstring(self.body)

    @property
    def code(self) -> str | None:
        return self.xml.findtext("sts:Error/sts:Code", namespaces=NS)

    @property
    def message(self) -> str:
        return self.xml.findtext("sts:Error/sts:Message", "", namespaces=NS)

    def request_id_consistent(self) -> bool:
        body_id = (self.xml.findtext("sts:RequestId", namespaces=NS)
                   or self.xml.findtext("sts:ResponseMetadata/sts:RequestId", namespaces=NS))
        return bool(body_id) and self.headers.get("x-amz-request-id") == [body_id]


def params(token: str | None, **extra: str) -> dict[str, str]:
    p = {"Action": "AssumeRoleWithWebIdentity", "Version": "2011-06-15"}
    if token is not None:
        p["WebIdentityToken"] = token
    p.update(extra)
    return p


async def post(http, url: str, form: Mapping[str, str] | None = None, *, query: bool = False,
               body: bytes | None = None, content_type: str = wire.FORM_CONTENT_TYPE,
               method: str = "POST") -> Answer:
    if form is not None and query:
        url = url + "?" + urlencode(form)
    elif form is not None:
        body = urlencode(form).encode()
    started = time.monotonic()
    response = await http.request(method, url, data=body,
                                  headers={"Content-Type": [content_type]} if body else {})
    content = await treq.content(response)
    headers = {k.decode().lower(): [x.decode() for x in v]
               for k, v in response.headers.getAllRawHeaders()}
    return Answer(response.code, headers, content, time.monotonic() - started)


async def eventually(check, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await deferLater(reactor, interval, lambda: None)


def boto3_sts(url: str, ca: str, region: str = "us-east-1"):
    import boto3
    from botocore.config import Config

    return boto3.client("sts", endpoint_url=url, region_name=region, verify=ca,
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"max_attempts": 1}))


# -- real clients -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_boto3_exchange(world: World, daemon: Daemon) -> None:
    minio = world.tenants["tenant-1"].minio
    before = len(minio.minted)
    answer = await deferToThread(
        lambda: boto3_sts(daemon.sts_url("tenant-1"), str(world.pki.ca_path))
        .assume_role_with_web_identity(RoleArn=ROLE, RoleSessionName="app-session",
                                       WebIdentityToken=world.mint(), DurationSeconds=900))
    creds = answer["Credentials"]
    minted = minio.minted[before:]
    assert len(minted) == 1
    assert creds["AccessKeyId"] == minted[0].access_key
    assert creds["SecretAccessKey"] == minted[0].secret_key
    assert creds["SessionToken"] == minted[0].session_token
    assert minted[0].duration == 900
    assert answer["SubjectFromWebIdentityToken"] == "system:serviceaccount:apps:photo-sa"
    assert answer["Audience"] == "sts.min.io"
    assert answer["ResponseMetadata"]["RequestId"]
    # Exactly the bound policy (readwrite), never root's rights.
    assert minted[0].policy["Statement"] == [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::*"}]


@pytest_twisted.ensureDeferred
async def test_boto3_default_credential_chain(world: World, daemon: Daemon, tmp_path,
                                              monkeypatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(world.mint())
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", daemon.sts_url("tenant-1"))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(world.pki.ca_path))
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))

    def resolve():
        import boto3

        session = boto3.Session()
        creds = session.get_credentials()
        return creds.method, creds.get_frozen_credentials()

    method, frozen = await deferToThread(resolve)
    assert method == "assume-role-with-web-identity"
    assert frozen.access_key == world.tenants["tenant-1"].minio.minted[-1].access_key


@pytest_twisted.ensureDeferred
async def test_minio_py_iam_aws_provider(world: World, daemon: Daemon, tmp_path,
                                         monkeypatch) -> None:
    import urllib3
    from minio.credentials import IamAwsProvider

    token = world.mint()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE)
    provider = IamAwsProvider(
        custom_endpoint=daemon.sts_url("tenant-1"),
        http_client=urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(world.pki.ca_path)),
    )
    creds = await deferToThread(provider.retrieve)
    assert creds.access_key == world.tenants["tenant-1"].minio.minted[-1].access_key
    # minio-py sends the token in the query string: it must not reach the access log.
    await deferLater(reactor, 0.2, lambda: None)
    assert token not in daemon.log_text()


@pytest_twisted.ensureDeferred
async def test_second_tenant_other_region(world: World, daemon: Daemon, http) -> None:
    tenant = world.tenants["tenant-2"]
    before = len(tenant.minio.minted)
    answer = await post(http, daemon.sts_url("tenant-2"), params(world.mint()))
    assert answer.status == 200, answer.body
    assert len(tenant.minio.minted) == before + 1
    # The fake refuses AssumeRole signed for any region but eu-west-1.
    assert tenant.region == "eu-west-1"
    assert tenant.minio.minted[-1].policy["Statement"][0]["Action"] == [
        "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket"]


@pytest_twisted.ensureDeferred
async def test_session_policy_narrows_never_widens(world: World, daemon: Daemon, http) -> None:
    tenant = world.tenants["tenant-2"]  # bound: readonly
    # (one service per statement: MinIO refuses a statement mixing s3: and admin:)
    wide = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]},
        {"Effect": "Allow", "Action": ["admin:*"], "Resource": ["arn:aws:s3:::*"]}]}
    answer = await post(http, daemon.sts_url("tenant-2"),
                        params(world.mint(), Policy=json.dumps(wide)))
    assert answer.status == 200, answer.body
    statements = tenant.minio.minted[-1].policy["Statement"]
    assert statements == [{"Effect": "Allow", "Resource": "arn:aws:s3:::*", "Action": [
        "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket"]}] or all(
        set(s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
        <= {"s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket"} for s in statements)
    disjoint = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::*"]}]}
    before = len(tenant.minio.minted)
    answer = await post(http, daemon.sts_url("tenant-2"),
                        params(world.mint(), Policy=json.dumps(disjoint)))
    assert (answer.status, answer.code) == (403, "AccessDenied")
    assert len(tenant.minio.minted) == before


# -- the error table, row by row, over raw HTTP ------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_response_has_request_id(world: World, daemon: Daemon, http) -> None:
    for answer in [
        await post(http, daemon.sts_url("tenant-1"), params(world.mint())),
        await post(http, daemon.sts_url("tenant-1"), params(None)),
        await post(http, daemon.url + "/elsewhere", method="GET"),
    ]:
        assert answer.request_id_consistent(), answer.body


@pytest_twisted.ensureDeferred
async def test_parameter_rows(world: World, daemon: Daemon, http) -> None:
    url = daemon.sts_url("tenant-1")
    token = world.mint()
    cases = [
        (dict(body=b"%zz=1&\xff", content_type=wire.FORM_CONTENT_TYPE), "InvalidParameterValue", 400),
        (dict(body=b'{"Action": 1}', content_type="application/json"), "InvalidParameterValue", 400),
        (dict(form=params(token, Version="2000-01-01")), "MissingParameter", 400),
        (dict(form={k: v for k, v in params(token).items() if k != "Version"}), "MissingParameter", 400),
        (dict(form=params(token, Action="AssumeRole")), "InvalidParameterValue", 400),
        (dict(form=params(None)), "MissingParameter", 400),
        (dict(form=params("")), "MissingParameter", 400),
        (dict(form=params("definitely-not-a-jwt")), "InvalidIdentityToken", 400),
        (dict(form=params(token + "x" * 20_001)), "InvalidIdentityToken", 400),
        (dict(form=params(token, DurationSeconds="ten")), "InvalidParameterValue", 400),
        (dict(form=params(token, DurationSeconds="60")), "InvalidParameterValue", 400),
        (dict(form=params(token, DurationSeconds="43201")), "InvalidParameterValue", 400),
        (dict(form=params(token, Policy="{oops")), "MalformedPolicyDocument", 400),
        (dict(form=params(token, Policy='{"Statement":[{"Effect":"Allow"}]}')),
         "MalformedPolicyDocument", 400),
        (dict(body=b"WebIdentityToken=" + b"a" * (70 * 1024)), "InvalidParameterValue", 400),
    ]
    for kw, code, status in cases:
        answer = await post(http, url, **kw)
        assert (answer.status, answer.code) == (status, code), (kw.get("form"), answer.body[:300])
        assert answer.request_id_consistent()


@pytest_twisted.ensureDeferred
async def test_bad_namespace_and_paths(world: World, daemon: Daemon, http) -> None:
    for path in ["/sts/Tenant-1", "/sts/tenant-1%2F..", "/sts/a/b", "/sts/" + "a" * 300]:
        answer = await post(http, daemon.url + path, params(world.mint()))
        assert (answer.status, answer.code) == (400, "InvalidParameterValue"), path
    answer = await post(http, daemon.url + "/nope", params(world.mint()))
    assert answer.status == 404 and answer.code == "NotFound"
    answer = await post(http, daemon.sts_url("tenant-1"), method="GET")
    assert answer.status == 405 and answer.code == "MethodNotAllowed"


@pytest_twisted.ensureDeferred
async def test_unauthenticated_tokens_denied(world: World, daemon: Daemon, http) -> None:
    from stsd.testing.tokens import TokenIssuer

    url = daemon.sts_url("tenant-1")
    world.kubernetes.create_serviceaccount("apps", "doomed-sa")
    world.kubernetes.add_policybinding("tenant-1", "doomed", app_namespace="apps",
                                       serviceaccount="doomed-sa", policies=["readonly"])
    doomed = world.mint("apps", "doomed-sa")
    world.kubernetes.delete_serviceaccount("apps", "doomed-sa")
    forged = TokenIssuer().mint("apps", "photo-sa")  # right claims, wrong signing key
    minted_before = len(world.tenants["tenant-1"].minio.minted)
    for token in [
        forged,
        world.mint(lifetime=-10, now=time.time() - 100),  # expired
        world.mint(audiences=["https://kubernetes.default.svc"]),  # wrong audience
        doomed,  # ServiceAccount deleted
    ]:
        answer = await post(http, url, params(token))
        assert (answer.status, answer.code) == (403, "AccessDenied"), answer.body
    assert len(world.tenants["tenant-1"].minio.minted) == minted_before


@pytest_twisted.ensureDeferred
async def test_non_serviceaccount_user_refused(world: World, daemon: Daemon, http) -> None:
    import jwt

    token = jwt.encode({"sub": "alice"}, "k" * 64, algorithm="HS256")
    world.kubernetes.add_static_token(token, "oidc:alice")
    # Upstream would read this as ServiceAccount "alice" in namespace "oidc".
    world.kubernetes.add_policybinding("tenant-1", "oidc-trap", app_namespace="oidc",
                                       serviceaccount="alice", policies=["readwrite"])
    await deferLater(reactor, 1.5, lambda: None)
    answer = await post(http, daemon.sts_url("tenant-1"), params(token))
    assert (answer.status, answer.code) == (400, "InvalidIdentityToken"), answer.body


@pytest_twisted.ensureDeferred
async def test_no_binding_no_tenant_no_policy(world: World, daemon: Daemon, http) -> None:
    answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint("apps", "unbound-sa")))
    assert (answer.status, answer.code) == (403, "AccessDenied")
    # A namespace without a Tenant answers the same whether or not a binding
    # names the caller there: bindings are not the caller's to probe.
    unbound = await post(http, daemon.sts_url("no-tenant-here"), params(world.mint()))
    assert (unbound.status, unbound.code) == (400, "InvalidParameterValue")
    world.kubernetes.add_policybinding("no-tenant-here", "b", app_namespace="apps",
                                       serviceaccount="photo-sa", policies=["readonly"])
    # Bound to a policy MinIO does not have: skipped, nothing usable left.
    world.kubernetes.create_serviceaccount("apps", "ghost-sa")
    world.kubernetes.add_policybinding("tenant-1", "ghost", app_namespace="apps",
                                       serviceaccount="ghost-sa", policies=["no-such-policy"])
    # Added after the two above: once it grants, they are indexed too.
    world.kubernetes.create_serviceaccount("apps", "marker-sa")
    world.kubernetes.add_policybinding("tenant-1", "marker", app_namespace="apps",
                                       serviceaccount="marker-sa", policies=["readonly"])

    async def indexed() -> bool:
        answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint("apps", "marker-sa")))
        return answer.status == 200

    assert await eventually(indexed)
    bound = await post(http, daemon.sts_url("no-tenant-here"), params(world.mint()))
    assert (bound.status, bound.code, bound.message) == (unbound.status, unbound.code, unbound.message)
    answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint("apps", "ghost-sa")))
    assert (answer.status, answer.code) == (403, "AccessDenied"), answer.body


# A guardrail MinIO accepts (a top-level ID, a float Condition value, an admin
# statement without Resource) that stsd's parser refused when issue 9 was
# filed: it was skipped with its Deny s3:DeleteObject, and the credentials
# could delete.
GUARDRAIL = """{"Version": "2012-10-17", "ID": "guardrail", "Statement": [
  {"Effect": "Deny", "Action": ["admin:*"]},
  {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": ["arn:aws:s3:::*"]},
  {"Effect": "Deny", "Action": ["s3:PutObject"], "Resource": ["arn:aws:s3:::*"],
   "Condition": {"NumericGreaterThan": {"s3:max-keys": 10.5}}}]}"""


# The same Deny in syntax stsd has always read: the credentials exist and
# MinIO (the fake's S3) refuses the delete.
PLAIN_GUARDRAIL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Deny", "Action": ["s3:DeleteObject"], "Resource": ["arn:aws:s3:::*"]}]})


@pytest.mark.parametrize("name,guardrail", [("guardrail", GUARDRAIL), ("plain-guardrail", PLAIN_GUARDRAIL)])
@pytest_twisted.ensureDeferred
async def test_guardrail_denies_are_never_dropped(world: World, daemon: Daemon, http, name, guardrail) -> None:
    minio = world.tenants["tenant-1"].minio
    minio.set_policy(name, guardrail)
    minio.make_bucket("guarded")
    minio.put_object("guarded", "keep.txt", b"keep")
    world.kubernetes.create_serviceaccount("apps", f"{name}-sa")
    world.kubernetes.add_policybinding("tenant-1", name, app_namespace="apps",
                                       serviceaccount=f"{name}-sa", policies=["readwrite", name])
    url = daemon.sts_url("tenant-1")

    async def decided() -> Answer | None:
        answer = await post(http, url, params(world.mint("apps", f"{name}-sa")))
        return answer if answer.status == 200 or "cannot be read" in answer.message else None

    answer = await eventually(decided)
    assert answer is not None
    if answer.status != 200:
        assert answer.code == "AccessDenied"
        assert name == "guardrail"
        assert "guardrail" not in answer.message and "storage" not in answer.message
        return
    # Once stsd reads the guardrail: the credentials MinIO minted cannot delete.
    creds = answer.xml.find("sts:AssumeRoleWithWebIdentityResult/sts:Credentials", NS)

    def delete() -> str | None:
        import boto3
        from botocore.exceptions import ClientError

        s3 = boto3.client("s3", endpoint_url=world.minio_url + "/tenant-1", region_name="us-east-1",
                          verify=str(world.pki.ca_path),
                          aws_access_key_id=creds.findtext("sts:AccessKeyId", namespaces=NS),
                          aws_secret_access_key=creds.findtext("sts:SecretAccessKey", namespaces=NS),
                          aws_session_token=creds.findtext("sts:SessionToken", namespaces=NS))
        assert s3.get_object(Bucket="guarded", Key="keep.txt")["Body"].read() == b"keep"
        try:
            s3.delete_object(Bucket="guarded", Key="keep.txt")
        except ClientError as e:
            return e.response["Error"]["Code"]
        return None

    assert await deferToThread(delete) == "AccessDenied"
    assert minio.get_object("guarded", "keep.txt") == b"keep"


@pytest_twisted.ensureDeferred
async def test_packed_policy_too_large(world: World, daemon: Daemon, http) -> None:
    minio = world.tenants["tenant-1"].minio
    minio.set_policy("sprawling", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::bucket-{i}/*"]}
        for i in range(120)]})
    world.kubernetes.create_serviceaccount("apps", "sprawl-sa")
    world.kubernetes.add_policybinding("tenant-1", "sprawl", app_namespace="apps",
                                       serviceaccount="sprawl-sa", policies=["sprawling"])

    async def refused() -> bool:
        answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint("apps", "sprawl-sa")))
        return answer.code == "PackedPolicyTooLarge" and answer.status == 400

    assert await eventually(refused)


BINDINGS_PATH = "/apis/sts.min.io/v1beta1/policybindings"


def binding_lists(world: World) -> int:
    """PolicyBinding lists (not watches) the fake API server has answered."""
    return sum(1 for r in world.kubernetes.requests
               if r.path == BINDINGS_PATH and r.method == "GET" and "watch" not in r.query)


async def binding_round_trip(world: World, daemon: Daemon, http, sa: str) -> None:
    """
    A binding added grants, and deleted denies, without a restart (polled:
    how soon is the unit tests' business, with a Clock).
    """
    world.kubernetes.create_serviceaccount("apps", sa)
    token = world.mint("apps", sa)
    url = daemon.sts_url("tenant-1")
    assert (await post(http, url, params(token))).code == "AccessDenied"
    world.kubernetes.add_policybinding("tenant-1", sa, app_namespace="apps",
                                       serviceaccount=sa, policies=["photos"])

    async def granted() -> bool:
        return (await post(http, url, params(token))).status == 200

    assert await eventually(granted, timeout=30, interval=0.05)
    world.kubernetes.delete_policybinding("tenant-1", sa)

    async def denied() -> bool:
        return (await post(http, url, params(token))).code == "AccessDenied"

    assert await eventually(denied, timeout=30, interval=0.05)


@pytest_twisted.ensureDeferred
async def test_binding_changes_take_effect_by_watch(world: World, http) -> None:
    # A resync an hour away: a change applied with no new list came by the watch.
    watching = await world.start_daemon("watching", kubernetes={"resync_seconds": 3600})
    try:
        lists = binding_lists(world)
        await binding_round_trip(world, watching, http, "watched-sa")
        assert binding_lists(world) == lists, "applied by a re-list, not by the watch"
    finally:
        await watching.stop()


@pytest_twisted.ensureDeferred
async def test_binding_changes_take_effect_within_resync_without_watch(
        world: World, http) -> None:
    relisting = await world.start_daemon(
        "relisting", kubernetes={"watch": False, "resync_seconds": 1})
    try:
        lists = binding_lists(world)
        await binding_round_trip(world, relisting, http, "relisted-sa")
        assert binding_lists(world) > lists
    finally:
        await relisting.stop()


@pytest_twisted.ensureDeferred
async def test_jwks_mode_makes_no_api_call_per_request(world: World, http) -> None:
    from stsd.testing.tokens import TokenIssuer

    local = await world.start_daemon("jwks", kubernetes={"token_verification": "jwks"})
    try:
        reviews = world.kubernetes.count("/apis/authentication.k8s.io")
        discovery = world.kubernetes.count("/openid/v1/jwks")
        for _ in range(5):
            answer = await post(http, local.sts_url("tenant-1"), params(world.mint()))
            assert answer.status == 200, answer.body
        forged = await post(http, local.sts_url("tenant-1"),
                            params(TokenIssuer().mint("apps", "photo-sa")))
        assert forged.code == "AccessDenied"
        assert world.kubernetes.count("/apis/authentication.k8s.io") == reviews
        # One rate-limited refetch for the forged token's unknown key, at most.
        assert world.kubernetes.count("/openid/v1/jwks") - discovery <= 1
    finally:
        await local.stop()


@pytest_twisted.ensureDeferred
async def test_forged_tokens_never_reach_the_api_server(world: World, daemon: Daemon, http) -> None:
    import jwt

    reviews = world.kubernetes.count("/apis/authentication.k8s.io")
    valid = world.mint()
    header, payload, signature = valid.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    expired = world.mint(lifetime=-10, now=time.time() - 100)
    none_alg = jwt.encode({"sub": "system:serviceaccount:apps:photo-sa"}, None, algorithm="none") + "x"
    for token in (tampered, expired, world.mint(audiences=["other"])):
        answer = await post(http, daemon.sts_url("tenant-1"), params(token))
        assert answer.code == "AccessDenied", answer.body
    answer = await post(http, daemon.sts_url("tenant-1"), params(none_alg))
    assert answer.code in ("AccessDenied", "InvalidIdentityToken")
    assert world.kubernetes.count("/apis/authentication.k8s.io") == reviews


# -- upstream failures: answered in time, and the daemon keeps serving -------------


@pytest_twisted.ensureDeferred
async def test_kubernetes_failures(world: World, daemon: Daemon, http) -> None:
    url = daemon.sts_url("tenant-1")
    for mode in ["500", "close", "hang"]:
        world.kubernetes.fail("/apis/authentication.k8s.io", mode)
        answer = await post(http, url, params(world.mint()))
        world.kubernetes.clear_faults()
        assert (answer.status, answer.code) == (400, "IDPCommunicationError"), (mode, answer.body)
        assert answer.seconds < 2 + 1.5, (mode, answer.seconds)  # timeout_seconds is 2
    assert (await post(http, url, params(world.mint()))).status == 200


@pytest_twisted.ensureDeferred
async def test_minio_failures(world: World, daemon: Daemon, http) -> None:
    minio = world.tenants["tenant-1"].minio
    url = daemon.sts_url("tenant-1")
    for mode in ["500", "error", "close", "hang"]:
        minio.fail("assumerole", mode)
        answer = await post(http, url, params(world.mint()))
        minio.clear_faults()
        assert (answer.status, answer.code) == (500, "InternalError"), (mode, answer.body)
        # Neither the Tenant nor MinIO's text reaches the client (the log has them).
        assert "storage" not in answer.message and "internal error" not in answer.message
        assert minio.secret_key not in answer.message
        assert answer.seconds < 2 + 1.5, (mode, answer.seconds)
    assert (await post(http, url, params(world.mint()))).status == 200


@pytest_twisted.ensureDeferred
async def test_not_initialized_until_listed(world: World, daemon: Daemon, http) -> None:
    world.kubernetes.fail("/apis/minio.min.io", "500")
    try:
        cold = await world.start_daemon("cold", wait=False)
        answer = await post(http, cold.sts_url("tenant-1"), params(world.mint()))
        assert (answer.status, answer.code) == (503, "STSNotInitialized"), answer.body
        # Parameters are judged first, whatever the state.
        answer = await post(http, cold.sts_url("tenant-1"), params(None))
        assert (answer.status, answer.code) == (400, "MissingParameter")
        world.kubernetes.clear_faults()
        await world.wait_ready(cold)
        answer = await post(http, cold.sts_url("tenant-1"), params(world.mint()))
        assert answer.status == 200, answer.body
    finally:
        world.kubernetes.clear_faults()
    assert await cold.stop() in (0, -15)


@pytest_twisted.ensureDeferred
async def test_no_secret_in_daemon_log(world: World, daemon: Daemon, http) -> None:
    answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint()))
    assert answer.status == 200
    await deferLater(reactor, 0.2, lambda: None)
    log = daemon.log_text()
    secrets = [world.client_token]
    for tenant in world.tenants.values():
        secrets.append(tenant.minio.secret_key)
        for minted in tenant.minio.minted:
            secrets += [minted.secret_key, minted.session_token]
    assert secrets and not [s for s in secrets if s in log]
    assert "eyJ" not in log  # no JWT (header starts with {" base64url-encoded)


@pytest_twisted.ensureDeferred
async def test_identical_requests_reuse_credentials(world: World, daemon: Daemon, http) -> None:
    minio = world.tenants["tenant-1"].minio
    token = world.mint()
    before = minio.count("assumerole")
    answers = [await post(http, daemon.sts_url("tenant-1"), params(token)) for _ in range(3)]
    keys = {a.xml.findtext(".//sts:AccessKeyId", namespaces=NS) for a in answers}
    assert all(a.status == 200 for a in answers)
    assert len(keys) == 1 and minio.count("assumerole") == before + 1
    # Another token (same ServiceAccount) never gets those credentials.
    other = await post(http, daemon.sts_url("tenant-1"), params(world.mint()))
    assert other.xml.findtext(".//sts:AccessKeyId", namespaces=NS) not in keys
    # Nor does another duration.
    longer = await post(http, daemon.sts_url("tenant-1"), params(token, DurationSeconds="7200"))
    assert longer.xml.findtext(".//sts:AccessKeyId", namespaces=NS) not in keys


@pytest_twisted.ensureDeferred
async def test_daemon_needs_only_its_cluster_role(world: World, daemon: Daemon, http) -> None:
    from stsd.ops.rbac import PERMISSIONS

    answer = await post(http, daemon.sts_url("tenant-1"), params(world.mint()))
    assert answer.status == 200
    role = {(p.group, p.resource, verb) for p in PERMISSIONS for verb in p.verbs}
    used = world.kubernetes.used_permissions
    assert ("authentication.k8s.io", "tokenreviews", "create") in used
    assert ("sts.min.io", "policybindings", "list") in used
    assert used <= role, used - role
    # Secrets: read by name only, never listed or watched.
    assert ("", "secrets", "get") in used
    assert not {("", "secrets", "list"), ("", "secrets", "watch")} & (used | role)


async def peer_serial(url: str, ca: str) -> int:
    """The serial of the certificate the server at C{url} presents."""
    import ssl
    from urllib.parse import urlsplit

    from cryptography import x509

    def fetch() -> int:
        parts = urlsplit(url)
        context = ssl.create_default_context(cafile=ca)
        import socket

        with socket.create_connection((parts.hostname, parts.port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=parts.hostname) as tls_socket:
                der = tls_socket.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    return await deferToThread(fetch)


@pytest_twisted.ensureDeferred
async def test_certificate_rotation_without_restart(world: World, http, tmp_path) -> None:
    """
    A renewed certificate (the Secret's files replaced) is served within
    10 s; the daemon keeps answering with no restart.
    """
    import shutil

    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    shutil.copy(world.pki.cert_path, tls_dir / "tls.crt")
    shutil.copy(world.pki.key_path, tls_dir / "tls.key")
    rotating = await world.start_daemon(
        "rotating", server={"tls_cert": str(tls_dir / "tls.crt"), "tls_key": str(tls_dir / "tls.key")})
    ca = str(world.pki.ca_path)
    first = await peer_serial(rotating.url, ca)
    cert_pem, key_pem = world.pki.issue(["localhost"], ["127.0.0.1"])
    (tls_dir / "tls.key.new").write_bytes(key_pem)
    (tls_dir / "tls.crt.new").write_bytes(cert_pem)
    os.replace(tls_dir / "tls.key.new", tls_dir / "tls.key")
    os.replace(tls_dir / "tls.crt.new", tls_dir / "tls.crt")

    async def rotated() -> bool:
        return await peer_serial(rotating.url, ca) != first

    # Polled: the 10 s period itself is tests/test_certreload.py's, with a Clock.
    assert await eventually(rotated, timeout=40, interval=0.5)
    answer = await post(http, rotating.sts_url("tenant-1"), params(world.mint()))
    assert answer.status == 200
    assert await rotating.stop() in (0, -15)


@pytest_twisted.ensureDeferred
async def test_revoked_serviceaccount_stops_within_token_cache_ttl(
        world: World, daemon: Daemon, http) -> None:
    world.kubernetes.create_serviceaccount("apps", "revoked-sa")
    world.kubernetes.add_policybinding("tenant-1", "revoked", app_namespace="apps",
                                       serviceaccount="revoked-sa", policies=["readonly"])
    token = world.mint("apps", "revoked-sa")

    async def granted() -> bool:
        return (await post(http, daemon.sts_url("tenant-1"), params(token))).status == 200

    assert await eventually(granted)
    reviews = world.kubernetes.count("/apis/authentication.k8s.io")
    assert await granted()  # cached: no second review
    assert world.kubernetes.count("/apis/authentication.k8s.io") == reviews
    world.kubernetes.delete_serviceaccount("apps", "revoked-sa")

    async def denied() -> bool:
        answer = await post(http, daemon.sts_url("tenant-1"), params(token))
        return answer.code == "AccessDenied"

    # token_cache_seconds is 2 in the test world; the TTL itself is
    # tests/test_tokencache.py's, with a Clock. Denied by a new TokenReview:
    assert await eventually(denied, timeout=30, interval=0.2)
    assert world.kubernetes.count("/apis/authentication.k8s.io") > reviews


@pytest_twisted.ensureDeferred
async def test_throttling(world: World, http) -> None:
    limited = await world.start_daemon("limited", limits={
        "failed_auth_per_client": {"rate": 0.1, "burst": 3},
        "per_serviceaccount": {"rate": 0.1, "burst": 2}})
    try:
        from stsd.testing.tokens import TokenIssuer

        url = limited.sts_url("tenant-1")
        # Per ServiceAccount: a burst of 2 credentials, then Throttling.
        answers = [await post(http, url, params(world.mint("apps", "photo-sa"))) for _ in range(3)]
        assert [a.status for a in answers[:2]] == [200, 200]
        assert (answers[2].status, answers[2].code) == (400, "Throttling")
        assert int(answers[2].headers["retry-after"][0]) >= 1
        # Failed authentications per client address: 3, then refused before TokenReview.
        forger = TokenIssuer()
        reviews = world.kubernetes.count("/apis/authentication.k8s.io")
        codes = [(await post(http, url, params(forger.mint("apps", "photo-sa", jti=str(i))))).code
                 for i in range(6)]
        assert codes == ["AccessDenied"] * 3 + ["Throttling"] * 3
        # Forged tokens are refused locally (signing keys known): no review at all.
        assert world.kubernetes.count("/apis/authentication.k8s.io") == reviews
    finally:
        await limited.stop()


@pytest_twisted.ensureDeferred
async def test_daemon_sends_no_server_header(world: World, daemon: Daemon, http) -> None:
    for answer in (await post(http, daemon.sts_url("tenant-1"), params(world.mint())),
                   await post(http, daemon.url + "/nowhere", method="GET")):
        assert answer.status in (200, 404)
        assert "server" not in answer.headers, answer.headers


# For trial: these need what only pytest gives; it reports them as skipped.
PytestOnly = pytest_only(
    globals(), "drives the daemon as a process (pytest fixtures world, daemon); run under pytest")

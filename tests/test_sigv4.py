"""
Tests for L{stsd.upstream.sigv4}: the signatures are exactly those of the C{minio}
package's signer, headers whose names differ only in case are signed as
the server reads them (checked by the fake MinIO's verifier), and the
signing key is derived once per day.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st
from minio.credentials import Credentials
from minio.signer import sign_v4_s3, sign_v4_sts
from twisted.trial.unittest import SynchronousTestCase
import pytest

from stsd.testing.fake_minio import verify_sigv4
from stsd.upstream import sigv4
from stsd.upstream.sigv4 import Signer

_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


def minio_authorization(service, method, url, headers, access, secret, sha, date, region):
    sign = sign_v4_sts if service == "sts" else sign_v4_s3
    return sign(method=method, url=urlsplit(url), region=region, headers=dict(headers),
                credentials=Credentials(access, secret), content_sha256=sha,
                date=date)["Authorization"]


class SigV4Tests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        service=st.sampled_from(["s3", "sts"]),
        method=st.sampled_from(["GET", "POST"]),
        path=st.sampled_from(["/", "/ns", "/ns/", "/minio/admin/v3/info", "/a%20b/c"]),
        query=st.lists(st.tuples(st.from_regex(r"[a-z]{1,5}", fullmatch=True),
                                 st.from_regex(r"[A-Za-z0-9%._~-]{0,8}", fullmatch=True)),
                       max_size=3, unique_by=lambda kv: kv[0]),
        # Names distinct in lower case: minio-py's signer keeps only the last of
        # names differing in case (test_names_differing_in_case_are_one_header).
        extra=st.dictionaries(st.from_regex(r"X-[A-Za-z]{1,8}", fullmatch=True), _value, max_size=3)
        .filter(lambda d: len({k.lower() for k in d}) == len(d)),
        access=_text, secret=_text,
        body=st.binary(max_size=50),
        seconds=st.integers(0, 4_000_000_000),
        region=st.sampled_from(["us-east-1", "eu-west-1", "x"]),
    )
    def test_same_signature_as_minio(self, service, method, path, query, extra, access, secret, body,
                                     seconds, region) -> None:
        date = datetime.fromtimestamp(seconds, tz=UTC)
        sha = hashlib.sha256(body).hexdigest()
        query_string = "&".join(f"{k}={v}" for k, v in sorted(query))
        headers = {"Host": "minio.test:9000", "X-Amz-Date": date.strftime("%Y%m%dT%H%M%SZ"),
                   "X-Amz-Content-Sha256": sha, **extra}
        url = f"https://minio.test:9000{path}" + (f"?{query_string}" if query_string else "")
        ours = Signer(access, secret).authorization(
            method=method, path=path, query=query_string, headers=headers, content_sha256=sha,
            amz_date=date.strftime("%Y%m%dT%H%M%SZ"), region=region, service=service)
        assert ours == minio_authorization(service, method, url, headers, access, secret, sha,
                                           date, region)

    @settings(max_examples=200, deadline=None)
    @given(
        names=st.lists(st.sampled_from(["X-Z", "X-z", "x-z", "X-Meta", "x-META"]), max_size=5),
        values=st.lists(_value, min_size=5, max_size=5),
        seconds=st.integers(0, 4_000_000_000),
    )
    # The example hypothesis found: stsd signed x-z;x-z, the server (and minio-py) x-z.
    @example(names=["X-Z", "X-z"], values=["", "", "", "", ""], seconds=0)
    @example(names=["X-Z", "X-z"], values=["a  b", " c", "", "", ""], seconds=86400)
    def test_names_differing_in_case_are_one_header(self, names, values, seconds) -> None:
        """
        Signed as MinIO verifies it: one lower-cased name, the values of every
        spelling comma-joined in the order sent.
        """
        amz_date = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y%m%dT%H%M%SZ")
        sha = hashlib.sha256(b"").hexdigest()
        sent = [("Host", "minio.test"), ("X-Amz-Date", amz_date), ("X-Amz-Content-Sha256", sha),
                *zip(names, values)]
        headers = dict(sent)  # what a caller passes: one value per distinct spelling
        authorization = Signer("root", "s3cret").authorization(
            method="POST", path="/", query="", headers=headers, content_sha256=sha,
            amz_date=amz_date, region="us-east-1", service="sts")
        signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
        assert signed == sorted({name.lower() for name in headers})
        wire = [*headers.items(), ("Authorization", authorization)]

        def header(name: str) -> list[str] | None:
            found = [value for key, value in wire if key.lower() == name]
            return found or None

        assert verify_sigv4(method="POST", raw_path="/", raw_query="", header=header, body=b"",
                            access_key="root", secret_key="s3cret", now=seconds,
                            service="sts", region="us-east-1") is None

    def test_signing_key_derived_once_per_day(self) -> None:
        monkeypatch = pytest.MonkeyPatch()
        self.addCleanup(monkeypatch.undo)
        derived = []
        real = sigv4.hmac.new

        def counting(key, msg, digestmod):
            if msg == b"aws4_request":
                derived.append(msg)
            return real(key, msg, digestmod)

        monkeypatch.setattr(sigv4.hmac, "new", counting)
        signer = Signer("root", "secret")
        day = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
        common = {"method": "POST", "path": "/", "query": "", "content_sha256": "0" * 64,
                  "region": "us-east-1", "service": "sts"}
        for minute in range(100):
            date = day + timedelta(minutes=minute)
            stamp = date.strftime("%Y%m%dT%H%M%SZ")
            signer.authorization(headers={"X-Amz-Date": stamp}, amz_date=stamp, **common)
        assert len(derived) == 1
        signer.authorization(headers={}, amz_date="20261201T000000Z", **common)
        assert len(derived) == 2

    def test_repr_hides_the_secret(self) -> None:
        assert "s3cr3t" not in repr(Signer("root", "s3cr3t"))

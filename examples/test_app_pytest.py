"""
An application's test with stsd's pytest plugin: the C{stsd_cluster}
fixture is a fake Kubernetes and fake MinIO on loopback TLS with the real
stsd daemon running against them. Run: C{pytest examples/test_app_pytest.py}.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from botocore.exceptions import ClientError
from twisted.internet.threads import deferToThread

from report_app import store_report


@pytest_twisted.ensureDeferred
async def test_the_app_stores_a_report(stsd_cluster) -> None:
    stsd_cluster.minio().make_bucket("photos")
    # The canned policy "photos" allows s3:GetObject and s3:PutObject on photos/*.
    await stsd_cluster.bind("report-writer", policies=["photos"],
                            namespace="reports", serviceaccount="writer")
    token = stsd_cluster.token("reports", "writer")

    def run(bucket: str) -> bytes:
        return store_report(sts_url=stsd_cluster.sts_url(), token=token,
                            s3_url=stsd_cluster.s3_url(), region=stsd_cluster.region(),
                            ca_file=stsd_cluster.ca_file, bucket=bucket, key="r.txt",
                            body=b"all good")

    # boto3 blocks: run it in a thread, the fakes answer from the reactor.
    assert await deferToThread(run, "photos") == b"all good"
    assert stsd_cluster.minio().get_object("photos", "r.txt") == b"all good"
    # The binding grants nothing outside photos/*.
    stsd_cluster.minio().make_bucket("private")
    with pytest.raises(ClientError) as refused:
        await deferToThread(run, "private")
    assert refused.value.response["Error"]["Code"] == "AccessDenied"

"""
An application's test with stsd's trial base class: each test gets
C{self.cluster}, a fake Kubernetes and fake MinIO on loopback TLS with the
real stsd daemon running against them, stopped after the test.
Run: C{trial examples/test_app_trial.py}.
"""

from __future__ import annotations

from botocore.exceptions import ClientError
from twisted.internet.threads import deferToThread

from report_app import store_report
from stsd.testing.trial import ClusterTestCase


class AppTests(ClusterTestCase):
    async def store(self, bucket: str, token: str) -> bytes:
        cluster = self.cluster
        # boto3 blocks: run it in a thread, the fakes answer from the reactor.
        return await deferToThread(
            store_report, sts_url=cluster.sts_url(), token=token, s3_url=cluster.s3_url(),
            region=cluster.region(), ca_file=cluster.ca_file, bucket=bucket, key="r.txt",
            body=b"all good")

    async def test_the_app_stores_a_report(self) -> None:
        self.cluster.minio().make_bucket("photos")
        # The canned policy "photos" allows s3:GetObject and s3:PutObject on photos/*.
        await self.cluster.bind("report-writer", policies=["photos"],
                                namespace="reports", serviceaccount="writer")
        token = self.cluster.token("reports", "writer")

        self.assertEqual(await self.store("photos", token), b"all good")
        self.assertEqual(self.cluster.minio().get_object("photos", "r.txt"), b"all good")
        # The binding grants nothing outside photos/*.
        self.cluster.minio().make_bucket("private")
        with self.assertRaises(ClientError) as refused:
            await self.store("private", token)
        self.assertEqual(refused.exception.response["Error"]["Code"], "AccessDenied")

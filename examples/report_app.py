"""
The application under test in the two example tests: it exchanges its
ServiceAccount token for S3 credentials at stsd with boto3, as it would in
a pod, and stores a report in MinIO with them.
"""

from __future__ import annotations

import boto3
from botocore import UNSIGNED
from botocore.config import Config


def store_report(*, sts_url: str, token: str, s3_url: str, region: str, ca_file: str,
                 bucket: str, key: str, body: bytes) -> bytes:
    """Get credentials from stsd, put C{body} at C{bucket/key}, read it back."""
    # AssumeRoleWithWebIdentity is not signed: the token is the credential.
    sts = boto3.client("sts", endpoint_url=sts_url, region_name=region, verify=ca_file,
                       config=Config(signature_version=UNSIGNED))
    credentials = sts.assume_role_with_web_identity(
        RoleArn="arn:aws:iam::000000000000:role/stsd", RoleSessionName="report-writer",
        WebIdentityToken=token)["Credentials"]
    s3 = boto3.client(
        "s3", endpoint_url=s3_url, region_name=region, verify=ca_file,
        aws_access_key_id=credentials["AccessKeyId"],
        aws_secret_access_key=credentials["SecretAccessKey"],
        aws_session_token=credentials["SessionToken"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

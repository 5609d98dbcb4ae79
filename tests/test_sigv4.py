"""The fast presigner signs exactly as botocore does, and real servers accept its URLs."""
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.config import Config

from core.sources.sigv4 import FastPresigner


def botocore_client(endpoint, style="path", token=None, region="us-east-1"):
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id="AKIDEXAMPLE",
                        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", aws_session_token=token,
                        config=Config(signature_version="s3v4", s3={"addressing_style": style}))


@pytest.mark.parametrize("endpoint, style, token, region", [
    ("http://127.0.0.1:9000", "path", None, "us-east-1"),
    ("https://s3.oss-cn-hangzhou.aliyuncs.com", "virtual", None, "oss-cn-hangzhou"),
    ("https://minio.example.com:8443", "path", "session-token/with+chars=", "eu-west-1"),
])
@pytest.mark.parametrize("key", ["plain.txt", "a b/c+d%e#f?g/ünï 文件.bin", "~tilde/x=y&z"])
def test_same_signature_as_botocore(monkeypatch, endpoint, style, token, region, key):
    client = botocore_client(endpoint, style, token, region)
    fast = FastPresigner(client, "my-bucket", 3600)
    theirs = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=3600)
    date = dict(parse_qsl(urlsplit(theirs).query))["X-Amz-Date"]
    ours = fast.url(key, amz_date=date)
    assert urlsplit(ours).path == urlsplit(theirs).path
    assert dict(parse_qsl(urlsplit(ours).query)) == dict(parse_qsl(urlsplit(theirs).query))


def test_moto_server_accepts_fast_urls(s3, bucket):
    import urllib.request
    client = s3.client()
    client.put_object(Bucket=bucket, Key="x y/ü+.txt", Body=b"hello")
    fast = FastPresigner(botocore_client(s3.endpoint), bucket, 60)
    assert urllib.request.urlopen(fast.url("x y/ü+.txt")).read() == b"hello"

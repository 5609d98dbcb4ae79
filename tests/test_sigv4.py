"""The lean S3 signer signs exactly as botocore does, and real servers accept its URLs: object GETs and
listing pages, path-style and virtual-hosted addressing, session tokens, awkward keys."""
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest
from botocore.config import Config

from core.sources import StoreConfig
from core.sources.s3 import S3Source, addressing, configured_endpoint, signing_region
from core.sources.sigv4 import SigV4Signer

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def botocore_client(endpoint, style="path", token=None, region="us-east-1"):
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=KEY_ID,
                        aws_secret_access_key=SECRET, aws_session_token=token,
                        config=Config(signature_version="s3v4", s3={"addressing_style": style}))


def same(ours: str, theirs: str) -> None:
    assert urlsplit(ours)[:3] == urlsplit(theirs)[:3]  # scheme, host, path (as encoded)
    assert dict(parse_qsl(urlsplit(ours).query)) == dict(parse_qsl(urlsplit(theirs).query))


CASES = [
    ("http://127.0.0.1:9000", "path", None, "us-east-1"),
    ("https://s3.oss-cn-hangzhou.aliyuncs.com", "virtual", None, "oss-cn-hangzhou"),
    ("https://minio.example.com:8443", "path", "session-token/with+chars=", "eu-west-1"),
]


@pytest.mark.parametrize("endpoint, style, token, region", CASES)
@pytest.mark.parametrize("key", ["plain.txt", "a b/c+d%e#f?g/ünï 文件.bin", "~tilde/x=y&z"])
def test_object_urls_are_botocores(endpoint, style, token, region, key):
    client = botocore_client(endpoint, style, token, region)
    theirs = client.generate_presigned_url("get_object", Params={"Bucket": "my-bucket", "Key": key}, ExpiresIn=3600)
    date = dict(parse_qsl(urlsplit(theirs).query))["X-Amz-Date"]
    origin, bucket_path = addressing(StoreConfig(bucket="my-bucket", endpoint=endpoint, addressing_style=style), region)
    ours = SigV4Signer((KEY_ID, SECRET, token or ""), region).url(origin, f"{bucket_path}/{key}", amz_date=date)
    same(ours, theirs)


@pytest.mark.parametrize("endpoint, style, token, region", CASES)
def test_listing_urls_are_botocores(endpoint, style, token, region):
    client = botocore_client(endpoint, style, token, region)
    args = {"Bucket": "my-bucket", "Prefix": "data/ü x+", "MaxKeys": 1000, "ContinuationToken": "tok/+=",
            "EncodingType": "url"}
    theirs = client.generate_presigned_url("list_objects_v2", Params=args, ExpiresIn=3600)
    date = dict(parse_qsl(urlsplit(theirs).query))["X-Amz-Date"]
    origin, bucket_path = addressing(StoreConfig(bucket="my-bucket", endpoint=endpoint, addressing_style=style), region)
    params = [("list-type", "2"), ("max-keys", "1000"), ("prefix", "data/ü x+"), ("continuation-token", "tok/+="),
              ("encoding-type", "url")]
    ours = SigV4Signer((KEY_ID, SECRET, token or ""), region).url(origin, bucket_path or "/", params, amz_date=date)
    same(ours, theirs)


@pytest.mark.parametrize("endpoint, region", [
    ("https://s3.oss-cn-hangzhou.aliyuncs.com", "oss-cn-hangzhou"),
    ("https://oss-cn-shanghai-internal.aliyuncs.com", "oss-cn-shanghai"),
])
def test_oss_through_its_s3_api_gets_virtual_hosts_and_its_region(endpoint, region):
    config = StoreConfig(bucket="my-bucket", endpoint=endpoint)
    assert signing_region(config) == region
    origin, bucket_path = addressing(config, region)
    assert origin == endpoint.replace("https://", "https://my-bucket.") and bucket_path == ""
    # Other stores keep path style unless asked; AWS itself gets virtual hosts for DNS-safe names.
    assert addressing(StoreConfig(bucket="b1", endpoint="http://127.0.0.1:9000"), "us-east-1") == \
        ("http://127.0.0.1:9000", "/b1")
    assert addressing(StoreConfig(bucket="my-bucket"), "eu-west-1") == ("https://my-bucket.s3.eu-west-1.amazonaws.com", "")
    assert addressing(StoreConfig(bucket="my.dotted.bucket"), "eu-west-1")[1] == "/my.dotted.bucket"


def test_moto_server_accepts_our_urls_and_listings(s3, bucket):
    import urllib.request
    client = s3.client()
    keys = ["x y/ü+.txt", "a%2Fb", "plain"]
    for key in keys:
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    source = S3Source(StoreConfig(bucket=bucket, endpoint=s3.endpoint,
                                  credentials={"access_key_id": "test-access-key", "secret_access_key": "x"}))
    page = source.list_page(None)
    assert sorted(o.key for o in page.objects) == sorted(keys) and not page.truncated
    for obj in page.objects:
        assert urllib.request.urlopen(source.signer(obj)(False)).read() == obj.key.encode()


def test_the_endpoint_comes_from_the_aws_sdks_environment_when_not_given(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    assert configured_endpoint(StoreConfig(bucket="b")) is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert configured_endpoint(StoreConfig(bucket="b")) == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")  # the service's own wins, as in botocore
    assert configured_endpoint(StoreConfig(bucket="b")) == "http://127.0.0.1:2"
    assert configured_endpoint(StoreConfig(bucket="b", endpoint="http://127.0.0.1:3")) == "http://127.0.0.1:3"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert configured_endpoint(StoreConfig(bucket="b")) is None

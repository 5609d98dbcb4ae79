"""The scenarios' objects, seeded once into the bench bucket (a marker object records what is there)."""
from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from bench.seaweed import ACCESS_KEY, REGION, SECRET_KEY

BUCKET = "bench"
KiB, MiB, GiB = 1024, 1024 ** 2, 1024 ** 3
MARKERS = "_bench-markers/"


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    prefix: str          # ends with '/'
    count: int
    min_size: int
    max_size: int
    folders: int = 1
    rerun: bool = False  # measured: a second run into a folder the first one filled, nothing changed

    def objects(self):
        """(key, size) for every object, the same on every run."""
        rng = random.Random(f"bench-{self.prefix}")
        width = len(str(max(self.count - 1, 1)))
        for i in range(self.count):
            size = rng.randint(self.min_size, self.max_size)
            folder = f"d{i % self.folders:02d}/" if self.folders > 1 else ""
            yield f"{self.prefix}{folder}f{i:0{width}d}.bin", size

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.objects())


def scenarios(objects: int | None = None, big_mb: int = 1024) -> dict[int, Scenario]:
    n1, n3 = objects or 20_000, objects or 100_000
    return {
        1: Scenario(1, f"{n1:,} objects of 1–32 KiB", f"s1-n{n1}/", n1, 1 * KiB, 32 * KiB, folders=5),
        2: Scenario(2, f"one {big_mb / 1024:g} GiB object", f"s2-{big_mb}m/", 1, big_mb * MiB, big_mb * MiB),
        3: Scenario(3, f"{n3:,} objects of 1–4 KiB", f"s3-n{n3}/", n3, 1 * KiB, 4 * KiB, folders=10),
        4: Scenario(4, "an empty prefix", "s4-empty/", 0, 0, 0),
        5: Scenario(5, "a rerun of scenario 1, nothing changed", f"s1-n{n1}/", n1, 1 * KiB, 32 * KiB, folders=5,
                    rerun=True),
    }


def client(endpoint: str, pool: int = 64):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name=REGION, config=Config(
                            request_checksum_calculation="when_required", response_checksum_validation="when_required",
                            s3={"addressing_style": "path"}, max_pool_connections=pool,
                            retries={"mode": "standard", "max_attempts": 10}))


def ensure_bucket(s3) -> None:
    for attempt in range(60):
        try:
            s3.head_bucket(Bucket=BUCKET)
            return
        except ClientError:
            try:
                s3.create_bucket(Bucket=BUCKET)
                return
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if attempt == 59:
                    raise
                time.sleep(1)


def seeded(s3, sc: Scenario) -> bool:
    try:
        body = s3.get_object(Bucket=BUCKET, Key=MARKERS + sc.prefix.rstrip("/"))["Body"].read()
    except ClientError:
        return False
    info = json.loads(body)
    return info.get("count") == sc.count and info.get("bytes") == sc.total_bytes


def seed(endpoint: str, sc: Scenario, threads: int = 32, log=print) -> None:
    s3 = client(endpoint, pool=threads * 2)
    ensure_bucket(s3)
    if seeded(s3, sc):
        log(f"  scenario {sc.number}: already seeded ({sc.count:,} objects under {sc.prefix})")
        return
    started = time.monotonic()
    log(f"  scenario {sc.number}: seeding {sc.count:,} objects under {sc.prefix} …")
    if sc.count == 1 and sc.min_size >= 64 * MiB:
        _put_multipart(s3, *next(sc.objects()), threads=min(threads, 8))
    elif sc.count:
        with ThreadPoolExecutor(threads) as pool:
            for done, _ in enumerate(pool.map(lambda kv: s3.put_object(Bucket=BUCKET, Key=kv[0], Body=os.urandom(kv[1])),
                                              sc.objects()), 1):
                if done % 20_000 == 0:
                    log(f"    {done:,}/{sc.count:,}")
    s3.put_object(Bucket=BUCKET, Key=MARKERS + sc.prefix.rstrip("/"),
                  Body=json.dumps({"count": sc.count, "bytes": sc.total_bytes}).encode())
    log(f"  scenario {sc.number}: seeded in {time.monotonic() - started:.0f}s")


def _put_multipart(s3, key: str, size: int, part: int = 64 * MiB, threads: int = 8) -> None:
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    try:
        def put(number: int) -> dict:
            length = min(part, size - (number - 1) * part)
            resp = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=number, Body=os.urandom(length))
            return {"PartNumber": number, "ETag": resp["ETag"]}
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(put, range(1, (size + part - 1) // part + 1)))
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    except BaseException:
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
        raise

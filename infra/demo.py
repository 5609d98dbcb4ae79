"""`make demo` (or `make demo BACKEND=oss`): a local S3 server (moto) or OSS-protocol server with a few
hundred sample objects, downloaded by the real CLI."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from infra import oss_server, s3_server

FOLDERS = {"photos/2024": ".jpg", "photos/2025": ".png", "reports": ".pdf", "logs/app": ".log"}
BUCKET = "demo-bucket"


def sample_objects(count: int = 300):
    rng = random.Random(7)
    folders = list(FOLDERS.items())
    for i in range(count):
        folder, suffix = folders[i % len(folders)]
        yield f"demo/{folder}/item-{i:04d}{suffix}", rng.randbytes(rng.randint(1024, 64 * 1024))


@contextmanager
def s3_store():
    with s3_server.MotoS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket=BUCKET)
        for key, body in sample_objects():
            client.put_object(Bucket=BUCKET, Key=key, Body=body)
        yield s3.endpoint, dict(AWS_ACCESS_KEY_ID=s3_server.ACCESS_KEY, AWS_SECRET_ACCESS_KEY=s3_server.SECRET_KEY)


@contextmanager
def oss_store():
    with oss_server.OssServer() as oss:
        oss.create_bucket(BUCKET)
        for key, body in sample_objects():
            oss.put(BUCKET, key, body)
        yield oss.endpoint, dict(OSS_ACCESS_KEY_ID=oss_server.ACCESS_KEY, OSS_ACCESS_KEY_SECRET=oss_server.SECRET_KEY)


def main() -> int:
    backend = os.environ.get("BACKEND", "s3")
    if backend not in ("s3", "oss"):
        print("error: BACKEND must be s3 or oss", file=sys.stderr)
        return 2
    output = Path(os.environ.get("DEMO_OUTPUT", "demo-downloads"))
    with (s3_store if backend == "s3" else oss_store)() as (endpoint, credentials):
        print(f"{backend} server at {endpoint}: 300 objects under {BUCKET}/demo/", flush=True)
        argv = [sys.executable, "-m", "flows.download", "--backend", backend, "--endpoint", endpoint,
                "--bucket", BUCKET, "--prefix", "demo/", "--output", str(output), "--concurrency", "16", "--yes"]
        shown = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
        print("$ " + " ".join([shown, *argv[1:]]), flush=True)  # the line a newcomer can copy
        env = dict(os.environ, **credentials, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        return subprocess.run(argv, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

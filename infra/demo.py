"""`make demo`: a local S3 server with a few hundred sample objects, downloaded by the real CLI."""
from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from infra.s3_server import ACCESS_KEY, SECRET_KEY, MotoS3

FOLDERS = {"photos/2024": ".jpg", "photos/2025": ".png", "reports": ".pdf", "logs/app": ".log"}


def seed(client, bucket: str, count: int = 300) -> None:
    rng = random.Random(7)
    folders = list(FOLDERS.items())
    for i in range(count):
        folder, suffix = folders[i % len(folders)]
        client.put_object(Bucket=bucket, Key=f"demo/{folder}/item-{i:04d}{suffix}",
                          Body=rng.randbytes(rng.randint(1024, 64 * 1024)))


def main() -> int:
    output = Path(os.environ.get("DEMO_OUTPUT", "demo-downloads"))
    with MotoS3() as s3:
        client = s3.client()
        client.create_bucket(Bucket="demo-bucket")
        seed(client, "demo-bucket")
        print(f"S3 server at {s3.endpoint}: 300 objects under s3://demo-bucket/demo/", flush=True)
        argv = [sys.executable, "-m", "flows.download", "--backend", "s3", "--endpoint", s3.endpoint,
                "--bucket", "demo-bucket", "--prefix", "demo/", "--output", str(output),
                "--concurrency", "16", "--yes"]
        print("$ " + " ".join(argv[1:]), flush=True)
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")
        return subprocess.run(argv, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())

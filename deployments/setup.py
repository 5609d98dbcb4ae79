"""One command for what `prefect deploy` needs beyond prefect.yaml: the work pool and credential blocks.

    python -m deployments.setup      # reads the environment, creates or updates, prints what it did

Credential blocks are Prefect Secret blocks holding JSON; deployments name them in `credentials_block`,
so no secret is ever a parameter value:
    s3-credentials   from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
    oss-credentials  from OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET / OSS_SESSION_TOKEN
    feishu-base-token  from PERSONAL_BASE_TOKEN (a plain string; the Feishu flow's token_block)
"""
from __future__ import annotations

import os
import sys

from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

WORK_POOL = "downloads"
FEISHU_BLOCK = "feishu-base-token"
BLOCKS = {
    "s3-credentials": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    "oss-credentials": ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"),
}


def ensure_work_pool(name: str = WORK_POOL) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"work pool {name!r} created (process)")
        except ObjectAlreadyExists:
            print(f"work pool {name!r} exists")


def save_credentials(block: str, key_id: str, secret: str, token: str = "") -> None:
    value = {"access_key_id": key_id, "secret_access_key": secret}
    if token:
        value["session_token"] = token
    Secret(value=value).save(block, overwrite=True)


def main() -> int:
    ensure_work_pool()
    for block, (id_var, secret_var, token_var) in BLOCKS.items():
        if os.environ.get(id_var) and os.environ.get(secret_var):
            save_credentials(block, os.environ[id_var], os.environ[secret_var], os.environ.get(token_var, ""))
            print(f"secret block {block!r} saved from {id_var}/{secret_var}")
        else:
            print(f"secret block {block!r} skipped: {id_var} and {secret_var} are not set")
    if os.environ.get("PERSONAL_BASE_TOKEN"):
        Secret(value=os.environ["PERSONAL_BASE_TOKEN"]).save(FEISHU_BLOCK, overwrite=True)
        print(f"secret block {FEISHU_BLOCK!r} saved from PERSONAL_BASE_TOKEN")
    else:
        print(f"secret block {FEISHU_BLOCK!r} skipped: PERSONAL_BASE_TOKEN is not set")
    return 0


if __name__ == "__main__":
    sys.exit(main())

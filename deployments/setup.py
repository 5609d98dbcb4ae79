"""One command for what `prefect deploy` needs beyond prefect.yaml: the work pool, blocks and the alert.

    python -m deployments.setup      # reads the environment, creates or updates, prints what it did

Credentials are typed blocks that deployments name in `credentials_block`, so no secret is ever a parameter:
    aws-credentials/s3-credentials   (prefect-aws) from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN
    oss-credentials/oss-credentials  (tasks.blocks) from OSS_ACCESS_KEY_ID / OSS_ACCESS_KEY_SECRET / OSS_SESSION_TOKEN
    secret/feishu-base-token         from PERSONAL_BASE_TOKEN (the Feishu flow's token_block)
Alerts (deployments/alerts.py), when one of these is set:
    DOWNLOAD_ALERT_WEBHOOK_URL  a Custom Webhook block `download-alerts` posting JSON {subject, body} there
    DOWNLOAD_ALERT_BLOCK        or an existing notification block, `type/name` (e.g. slack-webhook/ops)
    → automation `download-failed`: a notification whenever a download run ends Failed or Crashed.
Failure CSVs a browser can open, when DOWNLOAD_REPORTS_BUCKET is set:
    s3-bucket/download-reports  (prefect-aws) that bucket (+ DOWNLOAD_REPORTS_ENDPOINT for a non-AWS store),
    with the AWS_* keys; workers started with PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/download-reports
    upload each run's failure CSV there and link it from the artifact.
"""
from __future__ import annotations

import os
import sys

from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

WORK_POOL = "downloads"
S3_BLOCK, OSS_BLOCK, FEISHU_BLOCK, REPORTS_BLOCK = "s3-credentials", "oss-credentials", "feishu-base-token", \
    "download-reports"


def ensure_work_pool(name: str = WORK_POOL) -> None:
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            print(f"work pool {name!r} created (process)")
        except ObjectAlreadyExists:
            print(f"work pool {name!r} exists")


def aws_credentials(key_id: str, secret: str, token: str = "", endpoint: str = ""):
    from prefect_aws import AwsClientParameters, AwsCredentials
    return AwsCredentials(aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=token or None,
                          # SigV4: the presigned links to failure CSVs must work in every region and store.
                          aws_client_parameters=AwsClientParameters(endpoint_url=endpoint or None,
                                                                    config={"signature_version": "s3v4"}))


def save_s3_credentials(name: str, key_id: str, secret: str, token: str = "") -> None:
    aws_credentials(key_id, secret, token).save(name, overwrite=True)


def save_oss_credentials(name: str, key_id: str, secret: str, token: str = "") -> None:
    from tasks.blocks import OssCredentials
    OssCredentials(access_key_id=key_id, access_key_secret=secret, security_token=token or None).save(
        name, overwrite=True)


def save_secret_credentials(name: str, key_id: str, secret: str, token: str = "") -> None:
    """The JSON Secret block of earlier versions (still read by credentials_block)."""
    value = {"access_key_id": key_id, "secret_access_key": secret}
    if token:
        value["session_token"] = token
    Secret(value=value).save(name, overwrite=True)


def save_reports_bucket(bucket: str, credentials, name: str = REPORTS_BLOCK) -> None:
    """The bucket failure CSVs are uploaded to; its credentials carry the endpoint (for a non-AWS store)."""
    from prefect_aws import S3Bucket
    S3Bucket(bucket_name=bucket, bucket_folder="", credentials=credentials).save(name, overwrite=True)


def setup_alert(env) -> None:
    from prefect.blocks.core import Block

    from deployments import alerts
    if env.get("DOWNLOAD_ALERT_WEBHOOK_URL"):
        block = alerts.webhook_block(env["DOWNLOAD_ALERT_WEBHOOK_URL"])
        source = f"webhook block {alerts.WEBHOOK_BLOCK!r}"
    elif env.get("DOWNLOAD_ALERT_BLOCK"):
        block = Block.load(env["DOWNLOAD_ALERT_BLOCK"])
        source = f"block {env['DOWNLOAD_ALERT_BLOCK']!r}"
    else:
        print(f"automation {alerts.AUTOMATION!r} skipped: set DOWNLOAD_ALERT_WEBHOOK_URL or DOWNLOAD_ALERT_BLOCK")
        return
    alerts.ensure_failure_alert(block._block_document_id)
    print(f"automation {alerts.AUTOMATION!r}: failed or crashed download runs notify through {source}")


def main() -> int:
    env = os.environ
    import tasks.blocks
    tasks.blocks.OssCredentials.register_type_and_schema()  # so the UI offers the OSS Credentials form
    ensure_work_pool()
    aws = env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")
    if aws:
        save_s3_credentials(S3_BLOCK, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                            env.get("AWS_SESSION_TOKEN", ""))
        print(f"aws-credentials block {S3_BLOCK!r} saved from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    else:
        print(f"aws-credentials block {S3_BLOCK!r} skipped: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set")
    if env.get("OSS_ACCESS_KEY_ID") and env.get("OSS_ACCESS_KEY_SECRET"):
        save_oss_credentials(OSS_BLOCK, env["OSS_ACCESS_KEY_ID"], env["OSS_ACCESS_KEY_SECRET"],
                             env.get("OSS_SESSION_TOKEN", ""))
        print(f"oss-credentials block {OSS_BLOCK!r} saved from OSS_ACCESS_KEY_ID/OSS_ACCESS_KEY_SECRET")
    else:
        print(f"oss-credentials block {OSS_BLOCK!r} skipped: OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET are not set")
    if env.get("PERSONAL_BASE_TOKEN"):
        Secret(value=env["PERSONAL_BASE_TOKEN"]).save(FEISHU_BLOCK, overwrite=True)
        print(f"secret block {FEISHU_BLOCK!r} saved from PERSONAL_BASE_TOKEN")
    else:
        print(f"secret block {FEISHU_BLOCK!r} skipped: PERSONAL_BASE_TOKEN is not set")
    if env.get("DOWNLOAD_REPORTS_BUCKET"):
        if not aws:
            print("error: DOWNLOAD_REPORTS_BUCKET needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY", file=sys.stderr)
            return 2
        save_reports_bucket(env["DOWNLOAD_REPORTS_BUCKET"], aws_credentials(
            env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN", ""),
            env.get("DOWNLOAD_REPORTS_ENDPOINT", "")))
        print(f"s3-bucket block {REPORTS_BLOCK!r} saved: start workers with"
              f" PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK=s3-bucket/{REPORTS_BLOCK}")
    setup_alert(env)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Typed Prefect blocks of the downloader (prefect-aws's AwsCredentials covers S3)."""
from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class OssCredentials(Block):
    """An Aliyun OSS AccessKey pair (a RAM user's, or an STS triple) for the download flows."""
    _block_type_name = "OSS Credentials"
    _block_type_slug = "oss-credentials"
    _description = "Aliyun OSS AccessKey (RAM user or STS) for the bulk downloader's credentials_block."

    access_key_id: str = Field(..., title="AccessKey ID", min_length=1)
    access_key_secret: SecretStr = Field(..., title="AccessKey Secret")
    security_token: SecretStr | None = Field(None, title="STS security token",
                                             description="Only for temporary (STS) credentials.")

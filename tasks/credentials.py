"""Credentials named by a Prefect Secret block, so deployments never carry them as parameter values."""
from __future__ import annotations

from tasks.errors import UsageError

# Accepted spellings in the block's JSON → the names backends read.
_ALIASES = {
    "access_key_id": "access_key_id", "aws_access_key_id": "access_key_id", "AccessKeyId": "access_key_id",
    "secret_access_key": "secret_access_key", "aws_secret_access_key": "secret_access_key",
    "access_key_secret": "secret_access_key", "AccessKeySecret": "secret_access_key",
    "session_token": "session_token", "aws_session_token": "session_token", "security_token": "session_token",
    "SecurityToken": "session_token",
}


def normalize(values: dict) -> dict:
    return {_ALIASES[k]: str(v) for k, v in values.items() if k in _ALIASES and v}


def load_block_credentials(block_name: str) -> dict:
    """Read a Secret block whose value is JSON like {"access_key_id": ..., "secret_access_key": ...}."""
    from prefect.blocks.system import Secret
    try:
        value = Secret.load(block_name).get()
    except ValueError:
        raise UsageError(f"credentials block {block_name!r} not found (create a Secret block with that name)") \
            from None
    if not isinstance(value, dict) or not normalize(value).get("access_key_id"):
        raise UsageError(f"credentials block {block_name!r} must hold JSON with access_key_id and"
                         " secret_access_key") from None
    return normalize(value)

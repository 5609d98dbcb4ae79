"""Credentials named by a Prefect block, so deployments never carry them as parameter values.

`credentials_block` names one of (a bare name is looked up in this order; `type/name` picks one):
    aws-credentials/NAME  prefect-aws's AwsCredentials (access key id, SecretStr secret, session token)
    oss-credentials/NAME  tasks.blocks.OssCredentials (AccessKey id, SecretStr secret, STS token)
    secret/NAME           a Secret block holding JSON {"access_key_id", "secret_access_key", "session_token"}
                          (what earlier versions created; still read)
"""
from __future__ import annotations

from core.errors import UsageError

BLOCK_TYPES = ("aws-credentials", "oss-credentials", "secret")

# Accepted spellings in a Secret block's JSON → the names backends read.
_ALIASES = {
    "access_key_id": "access_key_id", "aws_access_key_id": "access_key_id", "AccessKeyId": "access_key_id",
    "secret_access_key": "secret_access_key", "aws_secret_access_key": "secret_access_key",
    "access_key_secret": "secret_access_key", "AccessKeySecret": "secret_access_key",
    "session_token": "session_token", "aws_session_token": "session_token", "security_token": "session_token",
    "SecurityToken": "session_token",
}


def normalize(values: dict) -> dict:
    return {_ALIASES[k]: str(v) for k, v in values.items() if k in _ALIASES and v}


def _secret(value) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else (value or "")


def _values(block) -> dict:
    from tasks.blocks import OssCredentials
    if isinstance(block, OssCredentials):
        found = {"access_key_id": block.access_key_id, "secret_access_key": _secret(block.access_key_secret),
                 "session_token": _secret(block.security_token)}
    elif hasattr(block, "aws_access_key_id"):  # prefect-aws AwsCredentials
        found = {"access_key_id": block.aws_access_key_id, "secret_access_key": _secret(block.aws_secret_access_key),
                 "session_token": _secret(block.aws_session_token)}
    else:  # Secret
        value = block.get()
        found = value if isinstance(value, dict) else {}
    return normalize(found)


def load_block_credentials(block_name: str) -> dict:
    """The access key id / secret / session token held by the named block; UsageError (one line) if none."""
    from prefect.blocks.core import Block

    import tasks.blocks  # noqa: F401 - registers OssCredentials so Block.load can build it
    slugs = [block_name] if "/" in block_name else [f"{kind}/{block_name}" for kind in BLOCK_TYPES]
    for slug in slugs:
        try:
            block = Block.load(slug)
        except (ValueError, KeyError):  # no such block (or block type)
            continue
        values = _values(block)
        if not (values.get("access_key_id") and values.get("secret_access_key")):
            raise UsageError(f"credentials block {slug!r} must hold an access key id and secret") from None
        return values
    raise UsageError(f"credentials block {block_name!r} not found (create an AWS Credentials, OSS Credentials"
                     " or Secret block with that name)") from None


def personal_base_token(block_name: str | None = None) -> str:
    """The Feishu personal base token from a Prefect Secret block (by name), else PERSONAL_BASE_TOKEN from
    the environment or ./.env."""
    if block_name:
        token = _secret_block(block_name, "token", "the personal base token", ("personal_base_token", "token"))
        if not token:
            raise UsageError(f"token block {block_name!r} holds no personal base token")
        return token
    from core.sources.feishu import token_from_env
    token = token_from_env()
    if not token:
        raise UsageError("no personal base token: set PERSONAL_BASE_TOKEN (environment or .env)"
                         " or name a Prefect Secret block")
    return token


def proxy_from_block(block_name: str) -> str:
    """The proxy URL held by a Prefect Secret block (it may carry a password: never a flow-run parameter);
    '' in the block means no proxy."""
    return _secret_block(block_name, "proxy", "the proxy URL", ("proxy", "url"))


def _secret_block(block_name: str, what: str, holding: str, keys: tuple[str, ...]) -> str:
    """A Secret block's value (a text, or the first of `keys` in a JSON one); UsageError when there is none."""
    from prefect.blocks.system import Secret
    try:
        value = Secret.load(block_name).get()
    except ValueError:
        raise UsageError(f"{what} block {block_name!r} not found (create a Secret block holding {holding})") \
            from None
    if isinstance(value, dict):
        value = next((value[k] for k in keys if value.get(k)), "")
    return str(value or "")

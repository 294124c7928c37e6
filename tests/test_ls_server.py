"""The local Label Studio server: install caching (with a fake pip), a real server's life cycle, failures."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from curation.devtools.local_label_studio import LocalLabelStudio, ensure_label_studio, start_local_label_studio
from curation.errors import ConfigError, LabelStudioError

# Stands in for ``sys.executable``: ``-m venv DIR`` makes a venv whose python fakes pip and importlib.metadata
# ``pip install label-studio==V`` fails when $FAKE_PIP_FAIL is set, else creates bin/label-studio.
_FAKE_PYTHON = r"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
    echo "$3" >> "$FAKE_LOG"
    exit 0
fi
here=$(dirname "$0")
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    if [ -n "$FAKE_PIP_FAIL" ]; then
        echo "ERROR: No matching distribution found for label-studio" >&2
        exit 1
    fi
    for arg in "$@"; do version=${arg#label-studio==}; done
    printf '#!/bin/sh\n' > "$here/label-studio"
    chmod +x "$here/label-studio"
    echo "$version" > "$here/../version.txt"
    exit 0
fi
if [ "$1" = "-c" ]; then
    cat "$here/../version.txt"
    exit $?
fi
exit 3
"""


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Install ``_FAKE_PYTHON`` as ``sys.executable``; returns the file listing the venvs it created."""
    script = tmp_path / "fake-python"
    script.write_text(_FAKE_PYTHON)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    created = tmp_path / "venvs-created.txt"
    created.touch()
    monkeypatch.setattr(sys, "executable", str(script))
    monkeypatch.setenv("FAKE_LOG", str(created))
    monkeypatch.delenv("FAKE_PIP_FAIL", raising=False)
    return created


def test_install_switches_the_venv_in_atomically_then_reuses_it(tmp_path: Path, fake_python: Path) -> None:
    venv = tmp_path / "cache" / "ls-venv-9.9.9"

    executable = ensure_label_studio("9.9.9", venv_dir=venv)

    assert executable == venv / "bin" / "label-studio"
    assert executable.is_file()
    assert venv.is_symlink(), "the venv is switched in by a symlink once pip succeeded"
    assert len(fake_python.read_text().splitlines()) == 1
    assert ensure_label_studio("9.9.9", venv_dir=venv) == executable
    assert len(fake_python.read_text().splitlines()) == 1, "a valid venv is reused, not rebuilt"


def test_a_venv_with_another_version_is_replaced(tmp_path: Path, fake_python: Path) -> None:
    venv = tmp_path / "ls-venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "label-studio").write_text("")
    (venv / "bin" / "python").symlink_to(sys.executable)  # the fake; reports no version file -> invalid
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")

    ensure_label_studio("1.0.0", venv_dir=venv)

    assert venv.is_symlink()
    assert (venv / "version.txt").read_text().strip() == "1.0.0"


def test_a_folder_that_is_not_a_venv_is_left_alone(tmp_path: Path, fake_python: Path) -> None:
    precious = tmp_path / "not-a-venv"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")

    with pytest.raises(LabelStudioError, match="not a virtualenv"):
        ensure_label_studio("1.0.0", venv_dir=precious)

    assert (precious / "notes.txt").read_text() == "keep me"


def test_a_failed_install_names_the_venv_and_quotes_pip_and_leaves_nothing_valid(
    tmp_path: Path, fake_python: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PIP_FAIL", "1")
    venv = tmp_path / "ls-venv-0.0.1"

    with pytest.raises(LabelStudioError) as caught:
        ensure_label_studio("0.0.1", venv_dir=venv)

    message = str(caught.value)
    assert str(venv) in message
    assert "No matching distribution found for label-studio" in message
    assert not venv.exists()
    assert list((tmp_path / ".ls-venv-0.0.1.builds").iterdir()) == [], "the failed build is removed"


def test_invalid_arguments_fail_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        start_local_label_studio(tmp_path / "missing")
    with pytest.raises(ConfigError, match="api_key"):
        start_local_label_studio(tmp_path, api_key="no spaces or dashes-allowed")


def test_log_tail_masks_secrets_and_stop_tolerates_an_exited_process(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text("user token=s3cr3ttoken42 password=hunter2hunter2\n")
    process = subprocess.Popen(["true"], start_new_session=True)
    process.wait()
    server = LocalLabelStudio(
        url="http://127.0.0.1:1",
        api_key="s3cr3ttoken42",
        username="u@example.com",
        password="hunter2hunter2",
        data_dir=tmp_path,
        document_root=tmp_path,
        log_path=log,
        process=process,
    )

    assert "s3cr3ttoken42" not in server.log_tail()
    assert "hunter2hunter2" not in server.log_tail()
    assert "s3cr3ttoken42" not in repr(server)
    server.stop()
    assert not server.is_running()


def _port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.labelstudio
def test_server_starts_accepts_its_token_refuses_others_and_stops(tmp_path: Path) -> None:
    from curation.errors import LabelStudioAuthError
    from curation.labelstudio.client import LabelStudioClient

    documents = tmp_path / "pool"
    documents.mkdir()
    server = start_local_label_studio(documents)
    try:
        assert server.is_running()
        assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200

        client = LabelStudioClient(server.url, server.api_key)
        assert client.whoami() == server.username

        intruder = LabelStudioClient(server.url, "0" * 40, max_retries=0)
        with pytest.raises(LabelStudioAuthError) as refused:
            intruder.whoami()
        assert refused.value.status == 401
        assert server.api_key not in str(refused.value)
    finally:
        server.stop()

    assert not server.is_running()
    assert not _port_is_open(server.port)
    assert not server.data_dir.exists(), "the temp data dir we created is removed"


@pytest.mark.labelstudio
def test_a_server_that_dies_while_starting_reports_its_log_tail(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "label_studio.sqlite3").write_bytes(b"this is not a database" * 100)
    documents = tmp_path / "pool"
    documents.mkdir()
    api_key = "ab" * 20

    with pytest.raises(LabelStudioError) as caught:
        start_local_label_studio(documents, data_dir=data_dir, api_key=api_key, timeout=120)

    message = str(caught.value)
    assert "exited with code" in message
    assert "file is not a database" in message, "the log tail explains why"
    assert api_key not in message


@pytest.mark.labelstudio
def test_an_occupied_port_is_reported_with_the_log_tail(tmp_path: Path) -> None:
    """Label Studio would silently move to the next port; we stop it and say so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]

        with pytest.raises(LabelStudioError) as caught:
            start_local_label_studio(tmp_path, port=port, timeout=120)

    message = str(caught.value)
    assert f"port {port} on 127.0.0.1 is in use" in message
    assert f"Port {port} is in use" in message, "the log tail shows Label Studio's own warning"

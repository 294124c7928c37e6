"""Install and deploy: building the package warns about nothing, the compose file renders before the Label Studio
key exists and has what docs/DEPLOYMENT.md says, the container's user owns what it writes, and the systemd units
pass ``systemd-analyze verify``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from curation.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UID = "10001"


# -- packaging -----------------------------------------------------------------------------------------------------

BUILD = """
import json, sys, warnings
from setuptools import build_meta
from setuptools.warnings import InformationOnly
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    wheel = build_meta.build_wheel(sys.argv[1])
    editable = build_meta.build_editable(sys.argv[1])
shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, InformationOnly)]
print(json.dumps({"wheel": wheel, "editable": editable, "warnings": shown}))
"""


@pytest.mark.heavy
def test_building_the_package_warns_about_nothing(tmp_path: Path) -> None:
    """What ``pip install .`` and ``pip install -e .`` run (the setuptools backend), on a copy of the sources. The
    one notice left, setuptools' ``InformationOnly`` "Editable installation" text, is information that pip shows
    only with ``-v``; every warning (a deprecated ``project.license`` table, package discovery) fails here."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "cli.py"):
        shutil.copy2(REPO / name, src / name)
    for package in ("curation", "store", "strategies"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out)], cwd=src, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["warnings"] == []
    with zipfile.ZipFile(out / result["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"cli.py", "curation/api.py", "store/migrations/env.py", "store/migrations/script.py.mako"} <= names
    assert any(n.startswith("store/migrations/versions/0001_") for n in names)
    assert "License-Expression: Apache-2.0" in metadata


# -- docker compose ------------------------------------------------------------------------------------------------


def _compose_command() -> list[str] | None:
    """Compose v2 (the docker plugin) if present, else Debian's v1 ``docker-compose``; None if neither runs."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for command in candidates:
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60, check=False)
        if probe.returncode == 0:
            return command
    return None


COMPOSE = _compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no Docker Compose client: neither `docker compose` (v2 plugin) nor `docker-compose` runs"
)


def _render(project: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    """``docker compose config`` on the project folder, with only ``env`` (plus PATH and HOME) in the environment."""
    assert COMPOSE is not None
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project), **env}
    done = subprocess.run(
        [*COMPOSE, "-f", str(project / "docker-compose.yml"), "--project-directory", str(project), *args, "config"],
        capture_output=True,
        text=True,
        env=clean,
        cwd=project,
        timeout=120,
        check=False,
    )
    return done.returncode, (yaml.safe_load(done.stdout) or {}) if done.returncode == 0 else {}, done.stderr


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """target -> (source, read-only), from v1's short syntax or v2's long syntax."""
    out: dict[str, tuple[str, bool]] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            out[target] = (source, bool(mode) and "ro" in mode[0].split(","))
        else:
            out[volume["target"]] = (str(volume.get("source", "")), bool(volume.get("read_only", False)))
    return out


@pytest.fixture
def compose_project(tmp_path: Path) -> Path:
    """The compose file in a folder of its own: no stray .env, bind mounts resolved inside it."""
    project = tmp_path / "deploy"
    project.mkdir()
    shutil.copy2(DEPLOY / "docker-compose.yml", project / "docker-compose.yml")
    return project


@needs_compose
def test_the_first_step_renders_before_the_api_key_exists(compose_project: Path) -> None:
    """The documented first step (`docker compose up -d` for Postgres and Label Studio) runs before anyone has a
    Label Studio token: a ``${LABEL_STUDIO_API_KEY:?...}`` would fail the whole file."""
    code, config, err = _render(compose_project, {})
    assert code == 0, err
    assert {"postgres", "label-studio"} <= set(config["services"])
    code, config, err = _render(compose_project, {}, "--profile", "loop")
    assert code == 0, err
    loop = config["services"]["curate-loop"]
    assert loop["environment"]["LABEL_STUDIO_API_KEY"] in ("", None)  # curate then says so itself (test below)
    assert loop["profiles"] == ["loop"]  # a plain `docker compose up` leaves the loop alone


@needs_compose
def test_the_rendered_file_has_what_the_deployment_docs_say(compose_project: Path) -> None:
    (compose_project / ".env").write_text(
        "LABEL_STUDIO_API_KEY=tok-123\nCOMPOSE_PROFILES=loop\nPOSTGRES_PASSWORD=pw9\n"
    )
    code, config, err = _render(compose_project, {})
    assert code == 0, err
    services = config["services"]
    # v2 renders the active profiles only, v1 every service: the others must wait in a profile of their own
    assert {"postgres", "label-studio", "curate-loop"} <= set(services)
    for name in set(services) - {"postgres", "label-studio", "curate-loop"}:
        assert services[name]["profiles"] in (["serve"], ["monitoring"]), name
    assert {"pgdata", "ls-data"} <= set(config["volumes"])

    loop = services["curate-loop"]
    env = loop["environment"]
    assert env["LABEL_STUDIO_API_KEY"] == "tok-123"  # from .env, as documented
    assert env["CURATE_DB"] == "postgresql+psycopg://curate:pw9@postgres:5432/curate"
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert env["CURATE_TRAIN__MODELS_DIR"] == "/models" and env["CURATE_LABEL_STUDIO__DOCUMENT_ROOT"] == "/data"
    assert str(loop["user"]) == f"{UID}:{UID}"
    mounts = _mounts(loop)
    assert mounts["/models"] == (str(compose_project / "models"), False)  # written by the container
    assert mounts["/data/images"] == (str(compose_project / "images"), True)
    assert mounts["/work/curate.yaml"] == (str(compose_project / "curate.yaml"), True)
    script = "\n".join(loop["command"]) if isinstance(loop["command"], list) else loop["command"]
    assert "/models is not writable" in script and "chown -R 10001:10001" in script
    assert "curate loop --pool /data/images" in script

    ls = services["label-studio"]
    assert ls["environment"]["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == "/data"
    assert _mounts(ls)["/data/images"] == (str(compose_project / "images"), True)  # same path in both containers
    assert _mounts(ls)["/label-studio/data"][0] in ("ls-data", f"{compose_project.name}_ls-data")
    assert _mounts(services["postgres"])["/var/lib/postgresql/data"][0] in ("pgdata", f"{compose_project.name}_pgdata")

    docs = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    for claim in (
        "COMPOSE_PROFILES=loop",
        'user: "10001:10001"',
        "sudo chown -R 10001:10001 models",
        "docker compose up -d",
    ):
        assert claim in docs, claim


@needs_compose
def test_the_serve_and_monitoring_profiles_fit_together(compose_project: Path) -> None:
    """``curate serve`` (profile serve) listens where Label Studio, ``ls connect`` and Prometheus (profile
    monitoring) look for it, with the credentials from .env; Prometheus and Grafana mount files that exist."""
    (compose_project / ".env").write_text(
        "LABEL_STUDIO_API_KEY=tok-123\nCURATE_SERVE_PASSWORD=pw-serve\nCURATE_SERVE_WEBHOOK_SECRET=hook-1\n"
    )
    code, config, err = _render(compose_project, {}, "--profile", "serve", "--profile", "monitoring")
    assert code == 0, err
    services = config["services"]
    assert {"curate-serve", "prometheus", "grafana"} <= set(services)
    serve = services["curate-serve"]
    env = serve["environment"]
    assert env["CURATE_SERVE__PASSWORD"] == "pw-serve" and env["CURATE_SERVE__WEBHOOK_SECRET"] == "hook-1"
    assert env["CURATE_SERVE__PUBLIC_URL"] == "http://curate-serve:9090"
    command = serve["command"]
    assert command[:2] == ["curate", "serve"] and command[command.index("--port") + 1] == "9090"
    assert command[command.index("--host") + 1] == "0.0.0.0"  # so serve refuses to start without auth (below)
    label_studio = services["label-studio"]["environment"]
    assert label_studio["ML_BLOCK_LOCAL_IP"] == "false" and label_studio["SSRF_PROTECTION_ENABLED"] == "false"

    scrape = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [j for j in scrape if j["job_name"] == "curate-serve"]
    assert job["static_configs"][0]["targets"] == ["curate-serve:9090"]
    assert job["basic_auth"]["username"] == env["CURATE_SERVE__USERNAME"]
    mounts = _mounts(services["prometheus"])
    assert job["basic_auth"]["password_file"] in mounts
    for service in ("prometheus", "grafana"):
        for target, (source, _) in _mounts(services[service]).items():
            if source.startswith(str(compose_project)) and not source.endswith(".password"):
                relative = Path(source).relative_to(compose_project)
                assert (DEPLOY / relative).exists(), f"{service} mounts {relative} at {target}: not in deploy/"


@needs_compose
def test_the_check_catches_a_malformed_file(compose_project: Path) -> None:
    """``config`` validates against the Compose specification's schema (a client without it would pass anything):
    a misspelt key fails."""
    text = (compose_project / "docker-compose.yml").read_text()
    (compose_project / "docker-compose.yml").write_text(text.replace("    healthcheck:", "    healthchek:", 1))
    code, _, err = _render(compose_project, {})
    assert code != 0 and "healthchek" in err, err


def test_the_image_user_owns_what_the_container_writes() -> None:
    """The Dockerfile runs as the uid the compose file names and creates the folders it writes, owned by it."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    text = "\n".join(lines)
    assert f"useradd --create-home --uid {UID} --gid {UID} curate" in text
    assert "mkdir -p /models /work /data" in text and "chown curate:curate /models /work" in text
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users == [f"{UID}:{UID}"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["curate-loop"]["user"] == f"{UID}:{UID}"


def test_the_loop_without_an_api_key_fails_with_its_own_clear_error(tmp_path: Path) -> None:
    """What the container does until .env has the key: one `Error:` line, exit 2, before any work."""
    (tmp_path / "pool").mkdir()
    env = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "", "CURATE_LABEL_STUDIO__API_KEY": ""}
    result = CliRunner().invoke(
        app, ["loop", "--db", f"sqlite:///{tmp_path / 'c.db'}", "--pool", str(tmp_path / "pool")], env=env
    )
    assert result.exit_code == ExitCode.USAGE, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no Label Studio API key: set LABEL_STUDIO_API_KEY" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


# -- systemd -------------------------------------------------------------------------------------------------------

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_the_systemd_units_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on copies of the units. It also checks that ExecStart's binary exists: the copy
    points ExecStart at a real executable standing in for /srv/curate/.venv/bin/curate (the only change), and any
    other complaint — an unknown key, a bad value, a timer without its service — fails the test."""
    assert SYSTEMD_ANALYZE is not None
    binary = "/srv/curate/.venv/bin/curate"
    stand_in = tmp_path / "bin" / "curate"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    service = (DEPLOY / "curate-loop.service").read_text()
    assert f"ExecStart={binary} loop " in service
    (tmp_path / "curate-loop.service").write_text(service.replace(binary, str(stand_in)))
    shutil.copy2(DEPLOY / "curate-loop.timer", tmp_path / "curate-loop.timer")

    def verify(*units: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SYSTEMD_ANALYZE, "verify", *units], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
        )

    done = verify("./curate-loop.service", "./curate-loop.timer")
    assert done.returncode == 0 and (done.stdout + done.stderr).strip() == "", done.stdout + done.stderr

    # the check sees real mistakes (systemd only warns about an unknown key: the empty output is what counts)
    (tmp_path / "typo.service").write_text(service.replace(binary, str(stand_in)).replace("SuccessExit", "SucessExit"))
    typo = verify("./typo.service")
    assert "Unknown key" in typo.stdout + typo.stderr

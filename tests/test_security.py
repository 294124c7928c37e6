"""Hostile and careless input (issue 17, items 1-3): model files never run code, secrets are never printed, and
untrusted text cannot drive the terminal. Each test fails on the code before the fix."""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import make_pool
from curation.errors import ExitCode

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def small_pool(tmp_path: Path) -> Path:
    make_pool(tmp_path / "pool", n=3, size=32)
    return tmp_path / "pool"


# ---------------------------------------------------------------------------------------------------------------------
# 1. Model files never execute code


class _Payload:
    """Unpickling this runs ``touch marker``: what a crafted checkpoint does under a default ``torch.load``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_a_crafted_checkpoint_is_refused_without_running_its_payload(
    tmp_path: Path, small_pool: Path, legacy: bool
) -> None:
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil, _use_new_zipfile_serialization=not legacy)
    code, _, err = run("score", "--pool", str(small_pool), "--model", str(evil), "--db", f"sqlite:///{tmp_path}/c.db")
    assert not marker.exists(), "the checkpoint's payload ran"
    assert code == ExitCode.UNSAFE_MODEL, err
    assert "refused" in err and "posix.system" in err and "Traceback" not in err


def test_a_plain_pickle_named_pt_does_not_run(tmp_path: Path, small_pool: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    code, _, err = run("score", "--pool", str(small_pool), "--model", str(evil), "--db", f"sqlite:///{tmp_path}/c.db")
    assert not marker.exists()
    assert code in (ExitCode.NOT_FOUND, ExitCode.UNSAFE_MODEL), err
    assert "Traceback" not in err


@pytest.mark.heavy
def test_a_torchscript_archive_with_a_pickled_payload_does_not_run(tmp_path: Path, small_pool: Path) -> None:
    """torch.jit.load resolves only TorchScript types: a Python global in its pickle is an unknown type."""
    import torch

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    good = tmp_path / "good.torchscript"
    torch.jit.script(Net()).save(str(good))
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.torchscript"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(evil, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Payload(marker), protocol=2)
            target.writestr(info, data)
    code, _, err = run("score", "--pool", str(small_pool), "--model", str(evil), "--db", f"sqlite:///{tmp_path}/c.db")
    assert not marker.exists()
    assert code == ExitCode.NOT_FOUND, err
    assert "cannot load TorchScript model" in err


def _packaged_architecture(name: str) -> dict[str, Any]:
    import ultralytics
    import yaml

    path = next(Path(ultralytics.__file__).parent.joinpath("cfg", "models").rglob(name))
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"activation": "__import__('os').system('touch {marker}') or nn.SiLU()"}, "activation"),
        ({"activation": "nn.SiLU(__import__('os').system('touch {marker}'))"}, "activation"),
        ({"head": [[-1, 1, "eval", ["__import__('os').system('touch {marker}')"]]]}, "head[0]"),
        ({"head": [[-1, 1, "Classify", ["__import__('os').system('touch {marker}')"]]]}, "arguments"),
    ],
    ids=["activation-expression", "activation-argument", "module-name", "argument-expression"],
)
def test_an_architecture_holding_code_is_refused(
    tmp_path: Path, small_pool: Path, change: dict[str, Any], fragment: str
) -> None:
    import yaml

    marker = tmp_path / "pwned"
    arch = _packaged_architecture("yolov8-cls.yaml")
    text = yaml.safe_dump(change).replace("{marker}", str(marker))
    arch.update(yaml.safe_load(text))
    path = tmp_path / "evil-cls.yaml"
    path.write_text(yaml.safe_dump(arch))
    code, _, err = run("score", "--pool", str(small_pool), "--model", str(path), "--db", f"sqlite:///{tmp_path}/c.db")
    assert not marker.exists(), "the architecture's code ran"
    assert code == ExitCode.UNSAFE_MODEL, err
    assert "refused" in err and fragment in err and "Traceback" not in err


@pytest.mark.heavy
def test_every_architecture_ultralytics_ships_passes_the_check() -> None:
    """The check refuses code, not real architectures (activation, scales, every layer Ultralytics uses)."""
    import ultralytics
    import yaml

    from curation.scoring.model_files import validate_architecture

    files = sorted(Path(ultralytics.__file__).parent.joinpath("cfg", "models").rglob("*.yaml"))
    assert len(files) > 20
    for path in files:
        validate_architecture(yaml.safe_load(path.read_text()), str(path))


def test_a_real_trained_model_still_loads_safely(tmp_path: Path, small_pool: Path, tiny_cls_model: Path) -> None:
    code, _, err = run(
        "score", "--pool", str(small_pool), "--model", str(tiny_cls_model), "--db", f"sqlite:///{tmp_path}/c.db"
    )
    assert code == 0, err
    import ultralytics.nn.tasks

    assert ultralytics.nn.tasks.SAFE_LOAD is True  # the load really ran in restricted mode


def _tamper(weights: Path) -> None:
    """Change one parameter, keeping the file a valid checkpoint (the test's own file: a full load is fine)."""
    import torch

    checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    model = checkpoint.get("ema") or checkpoint["model"]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(checkpoint, weights)


@pytest.mark.heavy
def test_a_tampered_registered_model_is_refused(tmp_path: Path, small_pool: Path, tiny_cls_model: Path) -> None:
    import shutil

    from curation.errors import ModelLoadError
    from curation.training.round import _check_base_weights
    from store import Store

    weights = tmp_path / "registered.pt"
    shutil.copy(tiny_cls_model, weights)
    db = f"sqlite:///{tmp_path}/c.db"
    code, _, err = run("score", "--pool", str(small_pool), "--model", str(weights), "--db", db)
    assert code == 0, err
    code, _, err = run("score", "--pool", str(small_pool), "--db", db, "--rescore")  # the registry's model: fine
    assert code == 0, err

    _tamper(weights)
    code, _, err = run("score", "--pool", str(small_pool), "--db", db, "--rescore")
    assert code == ExitCode.UNSAFE_MODEL, err
    assert "changed since they were registered" in err and "Traceback" not in err

    with Store.open(db) as store:  # training's base weights go through the same check
        current = store.models.current()
        assert current is not None
        with pytest.raises(ModelLoadError, match="changed since they were registered"):
            _check_base_weights(current, str(weights))


# ---------------------------------------------------------------------------------------------------------------------
# 2. Secrets are never printed

KEY = "k3y-0f-th3-tests-9f8e7d6c5b4a39281706"
DB_PASSWORD = "pgpa55-word-w1th"
URL_PASSWORD = "url-pa55w0rd-in-url"
VARIANTS = [[], ["--debug"], ["--json"], ["--debug", "--json"]]


def _assert_no_secret(code: int, out: str, err: str, expected: int, secrets: tuple[str, ...]) -> None:
    assert code == expected, out + err
    for secret in secrets:
        assert secret not in out and secret not in err, f"{secret!r} printed:\n{out}{err}"
    assert "Illegal header" not in err


def _error_paths(tmp_path: Path) -> list[tuple[list[str], dict[str, str], int, tuple[str, ...]]]:
    """(arguments, environment, expected exit code, secrets) for every error path that handles a secret."""
    db = f"sqlite:///{tmp_path}/c.db"
    list_section = tmp_path / "list-section.yaml"
    list_section.write_text(f"label_studio: [http://127.0.0.1:9, {KEY}]\n")
    scalar_section = tmp_path / "scalar-section.yaml"
    scalar_section.write_text(f"label_studio: {KEY}\n")
    db_section = tmp_path / "db-section.yaml"
    db_section.write_text(f"db: {{url: 'postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:5432/test'}}\n")
    key_in_file = tmp_path / "key-in-file.yaml"
    # double-quoted YAML so that the CR/LF escapes are real characters in the key
    key_in_file.write_text(f'label_studio: {{url: "http://127.0.0.1:9", api_key: "{KEY} \\r\\n", timeout: 2}}\n')
    unreachable = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "CURATE_LABEL_STUDIO__TIMEOUT": "2"}
    at_in_password = f"postgresql+psycopg://postgres:{DB_PASSWORD}@evil@127.0.0.1:5432/test"
    return [
        (["pull", "--project", "P", "--db", db, "--config", str(list_section)], {}, ExitCode.USAGE, (KEY,)),
        (["pull", "--project", "P", "--db", db, "--config", str(scalar_section)], {}, ExitCode.USAGE, (KEY,)),
        (["status", "--config", str(db_section)], {}, ExitCode.USAGE, (DB_PASSWORD,)),
        # a key pasted with a trailing space, CR or LF is stripped and used: the server is unreachable (exit 5)
        *(
            (["pull", "--project", "P", "--db", db], {**unreachable, "LABEL_STUDIO_API_KEY": KEY + tail}, 5, (KEY,))
            for tail in (" ", "\r", "\n", "\r\n")
        ),
        (["pull", "--project", "P", "--db", db, "--config", str(key_in_file)], {}, ExitCode.LABEL_STUDIO, (KEY,)),
        # a key that cannot be a header value: refused at the boundary (exit 2), not a crash
        *(
            (["pull", "--project", "P", "--db", db], {**unreachable, "LABEL_STUDIO_API_KEY": bad}, 2, (KEY, bad))
            for bad in (KEY + "\x01x", KEY + "\x7f", KEY[:10] + " " + KEY[10:], KEY + "é", "é" + KEY)
        ),
        (
            ["pull", "--project", "P", "--db", db],
            {**unreachable, "CURATE_LABEL_STUDIO__API_KEY": KEY[:10] + "\n" + KEY[10:]},
            ExitCode.USAGE,
            (KEY[:10], KEY[10:]),
        ),
        # credentials in the Label Studio URL: refused, never echoed
        (
            ["pull", "--project", "P", "--db", db],
            {"LABEL_STUDIO_URL": f"http://curate:{URL_PASSWORD}@127.0.0.1:9", "LABEL_STUDIO_API_KEY": KEY},
            ExitCode.USAGE,
            (KEY, URL_PASSWORD),
        ),
        # database URLs: an unencoded '@' in the password, an unreachable server, a bad port
        (["status", "--db", at_in_password], {}, ExitCode.USAGE, (DB_PASSWORD, f"{DB_PASSWORD}@evil", "evil@")),
        (
            ["status", "--db", f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:9/test"],
            {},
            ExitCode.DATABASE,
            (DB_PASSWORD,),
        ),
        (
            ["status", "--db", f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:port/test"],
            {},
            ExitCode.USAGE,
            (DB_PASSWORD,),
        ),
        (["status"], {"CURATE_DB": f"postgresql+psycopg://postgres:{DB_PASSWORD}@127.0.0.1:9/test"}, 4, (DB_PASSWORD,)),
    ]


@pytest.mark.heavy
def test_no_error_path_prints_a_secret(tmp_path: Path) -> None:
    for args, env, expected, secrets in _error_paths(tmp_path):
        for variant in VARIANTS:
            code, out, err = run(*args, *variant, env=env)
            _assert_no_secret(code, out, err, expected, secrets)


@pytest.mark.labelstudio
def test_no_secret_is_printed_against_a_real_label_studio(tmp_path: Path, label_studio: Any) -> None:
    """A refused key (exit 6) and the real key pasted with a trailing CR/LF (accepted: the project is missing)."""
    db = f"sqlite:///{tmp_path}/c.db"
    base = {"LABEL_STUDIO_URL": label_studio.url}
    real = label_studio.api_key
    for variant in VARIANTS:
        code, out, err = run("pull", "--project", "P", "--db", db, *variant, env={**base, "LABEL_STUDIO_API_KEY": KEY})
        _assert_no_secret(code, out, err, ExitCode.AUTH, (KEY,))
        for tail in (" ", "\r\n", "\n"):
            env = {**base, "LABEL_STUDIO_API_KEY": real + tail}
            code, out, err = run("pull", "--project", "no-such-project-x", "--db", db, *variant, env=env)
            _assert_no_secret(code, out, err, ExitCode.LABEL_STUDIO, (real,))
            assert "no-such-project-x" in out + err


def test_redaction_masks_urls_up_to_the_last_at() -> None:
    from curation.redact import redact
    from store.db import redacted

    assert redact("cannot use postgresql://u:p@ss@host/db: x") == "cannot use postgresql://u:***@host/db: x"
    assert redact("at http://tok@host:8080 while") == "at http://***@host:8080 while"
    assert redact("http://127.0.0.1:9 and a@b.c") == "http://127.0.0.1:9 and a@b.c"
    assert redacted("postgresql+psycopg://u:p@ss@host:5432/db") == "postgresql+psycopg://u:***@host:5432/db"


# ---------------------------------------------------------------------------------------------------------------------
# 3. Untrusted text cannot drive the terminal

HOSTILE = "evil\x1b[31mred\nsecond-line[bold]x[red].jpg"  # no "/": a file name cannot hold one


@pytest.mark.heavy
def test_a_hostile_file_name_is_printed_escaped(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    make_pool(pool, n=3, size=32)
    (pool / HOSTILE).write_bytes(b"\x00 not an image")
    db = f"sqlite:///{tmp_path}/c.db"
    code, out, err = run("score", "--pool", str(pool), "--model", "yolov8n-cls.yaml", "--db", db)
    assert code == 0, err
    code, status_out, status_err = run("status", "--pool", str(pool), "--db", db)
    assert code == 0, status_err
    for text in (out, err, status_out, status_err):
        assert "\x1b" not in text, repr(text)
    for text in (err, status_out):  # the warning and the failed list: the name on one line, escapes visible
        line = next(line for line in text.splitlines() if "evil" in line)
        assert "\\x1b[31mred\\nsecond-line[bold]x[red].jpg" in line, repr(text)
    assert not any(line.startswith("second-line") for line in (err + status_out).splitlines())


def test_printable_escapes_controls_bidi_and_undecodable_bytes() -> None:
    from curation.redact import printable

    assert printable("a\x1b[0m\r\n\t\x7f\x9b") == "a\\x1b[0m\\r\\n\\t\\x7f\\x9b"
    assert printable("x\u202ey") == "x\\u202ey"
    assert printable("bad\udcff.jpg") == "bad\\udcff.jpg"
    assert printable("Ünïcode ok") == "Ünïcode ok"


# ---------------------------------------------------------------------------------------------------------------------
# 13e. A tampered stored output excludes its item, named, instead of failing every selection


def test_a_tampered_stored_prediction_excludes_its_item_by_name(tmp_path: Path) -> None:
    import sqlite3

    import numpy as np

    from tests.models import save_thumbnail_model

    pool = tmp_path / "pool"
    make_pool(pool, n=12, size=48, seed=3)
    model, cfg = save_thumbnail_model(tmp_path)
    db = tmp_path / "c.db"
    args = ["--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", f"sqlite:///{db}"]
    code, _, err = run("score", *args, "--workers", "0")
    assert code == 0, err
    conn = sqlite3.connect(db)
    (a, a_path, probs), (b, b_path, vector) = (
        conn.execute(
            "SELECT p.item_id, i.path, p.probs FROM predictions p JOIN item_paths i ON i.item_id = p.item_id "
            "ORDER BY i.path LIMIT 1"
        ).fetchone(),
        conn.execute(
            "SELECT e.item_id, i.path, e.vector FROM embeddings e JOIN item_paths i ON i.item_id = e.item_id "
            "ORDER BY i.path DESC LIMIT 1"
        ).fetchone(),
    )
    bad_probs = np.frombuffer(probs, "<f4").copy()
    bad_probs[0] = np.nan
    bad_vector = np.frombuffer(vector, "<f2").copy()
    bad_vector[3] = np.inf
    conn.execute("UPDATE predictions SET probs = ? WHERE item_id = ?", (bad_probs.tobytes(), a))
    conn.execute("UPDATE embeddings SET vector = ? WHERE item_id = ?", (bad_vector.tobytes(), b))
    conn.commit()
    conn.close()
    for strategy in ("entropy", "hybrid"):
        copy = tmp_path / f"{strategy}.db"  # each strategy on the same tampered database
        copy.write_bytes(db.read_bytes())
        args[-1] = f"sqlite:///{copy}"
        code, out, err = run("select", *args, "--budget", "11", "--no-push", "--strategy", strategy, "--json")
        assert code == 0, err
        result = json.loads(out)
        picked = {Path(item["path"]).name for item in result["items"]}
        assert a_path not in picked and any(a_path in w for w in result["warnings"]), out
        if strategy == "hybrid":  # needs embeddings: the item with the edited vector is left out too
            assert b_path not in picked and len(picked) == 10, out
    from curation.config import DetectionAggregation
    from curation.selection import scores_uncertainty
    from store.records import DetectionScores

    det = DetectionScores(
        item_ids=np.array([1, 2, 3]),
        n_boxes=np.array([1, 2, 0]),
        box_conf=np.array([0.9, 0.8, np.nan], dtype=np.float32),
        box_scores=np.array([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]], dtype=np.float32),
    )
    values, classes = scores_uncertainty(det, 2, "entropy", DetectionAggregation())
    assert np.isfinite(values[0]) and np.isnan(values[1]) and not classes[1].any()

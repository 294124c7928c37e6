"""``embedding.model``: a separate image encoder whose embeddings the diversity strategies and the embedding
near-duplicate check use instead of the scoring model's. The scorer is the thumbnail classifier of
``tests.models`` (TorchScript, fixed by construction); the encoders are scripted here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cli import app
from curation.errors import ExitCode, RuntimeUnavailableError
from store import Store
from store.errors import RegistryConflictError
from tests.imports import heavy_imports
from tests.models import save_thumbnail_model

runner = CliRunner()
IMGSZ = 32  # the encoder's input side; the pool's images are this size, so the centre crop is the whole image


class SeededConvEncoder(torch.nn.Module):
    """A small random conv net (seeded): N x 3 x H x W -> N x 16."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.head(h)


class MeanColourEncoder(torch.nn.Module):
    """Features = the mean colour (as the last element of a tuple): an image and its mirror image are one vector."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(dim=1), x.mean(dim=(2, 3)) + 5.0


class PixelsOut(torch.nn.Module):
    """Not an encoder: returns its input (N x 3 x H x W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


def save_scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(module).save(str(path))
    return path


def conv_encoder(folder: Path) -> Path:
    torch.manual_seed(0)
    net = SeededConvEncoder().eval()
    path = folder / "conv.torchscript"
    torch.jit.script(net).save(str(path))
    return path


def colour_pool(root: Path, colours: list[tuple[int, int, int]], start: int = 0) -> list[Path]:
    """Solid-colour PNGs of IMGSZ x IMGSZ (distinct mean colours, distinct thumbnails)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, colour in enumerate(colours, start=start):
        path = root / f"solid{i:02d}.png"
        Image.new("RGB", (IMGSZ, IMGSZ), colour).save(path)
        paths.append(path)
    return paths


def split_pair(root: Path) -> tuple[Path, Path]:
    """Two images with the same mean colour and different layouts: red | blue and blue | red."""
    a = np.zeros((IMGSZ, IMGSZ, 3), np.uint8)
    a[:, : IMGSZ // 2, 0] = 255
    a[:, IMGSZ // 2 :, 2] = 255
    left, right = root / "red_blue.png", root / "blue_red.png"
    Image.fromarray(a).save(left)
    Image.fromarray(np.ascontiguousarray(a[:, ::-1])).save(right)
    return left, right


COLOURS = [(0, 160, 0), (230, 230, 0), (0, 200, 200), (128, 128, 128), (250, 120, 30), (40, 40, 90)]


def config(folder: Path, thumb_cfg: Path, encoder: Path | None, extra: str = "") -> Path:
    text = thumb_cfg.read_text() + "strategy:\n  hash_distance: null\n" + extra
    if encoder is not None:
        text += f"embedding:\n  model: {encoder}\n  imgsz: {IMGSZ}\n  batch_size: 4\n"
    path = folder / ("with_encoder.yaml" if encoder is not None else "without.yaml")
    path.write_text(text)
    return path


def curate_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def thumb(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "thumb"
    folder.mkdir()
    return save_thumbnail_model(folder)


def test_embeddings_are_stored_under_the_encoders_version_and_a_rerun_embeds_only_what_is_missing(
    tmp_path: Path, thumb: tuple[Path, Path]
) -> None:
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS[:4])
    encoder = conv_encoder(tmp_path)
    cfg = config(tmp_path, thumb_cfg, encoder)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    common = ["--pool", str(pool), "--config", str(cfg), "--db", db]

    first = curate_json("score", "--model", str(model), *common)
    assert first["scored"] == 4 and first["embedding"]["embedded"] == 4 and first["embedding"]["device"] == "cpu"
    version = first["embedding"]["model_version"]
    assert version.startswith("conv-encoder-") and version != first["model_version"]

    with Store.open(db) as store:
        record = store.models.get(first["model_version"])
        assert record is not None
        encoders = [mv for mv, _ in store.models.versions()]
        assert [mv.version for mv in encoders] == [first["model_version"]]  # the encoder is never listed
        assert store.models.current() == record  # nor current
        assert store.models.get(version) is None  # nor a version a command can name as its model
        item_ids = store.scores.embedded_items(record.id)
        assert len(item_ids) == 4
        # its vectors are the encoder's own output on the normalised image, L2-normalised (float16 stored)
        digest_record = next(iter(_encoders(store)))
        assert digest_record.version == version and digest_record.embedding_dim == 16
        assert digest_record.status == "encoder" and digest_record.task == "encoder"
        vectors, found = store.scores.embeddings(digest_record.id, item_ids, 16)
        assert found.all()
        paths = store.items.paths(1, [int(i) for i in item_ids])
    net = torch.jit.load(str(encoder))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    for row, path in zip(vectors, paths, strict=True):
        pixels = torch.from_numpy(np.array(Image.open(pool / path).convert("RGB"))).permute(2, 0, 1)[None]
        with torch.inference_mode():
            expected = net((pixels.float() / 255.0 - mean) / std)[0].numpy()
        expected /= np.linalg.norm(expected)
        np.testing.assert_allclose(row, expected, atol=2e-3)

    # two new images and one unreadable file: the model scores the new ones, the encoder embeds only those two,
    # and the unreadable item (failed when scored) is never embedded
    colour_pool(pool, COLOURS[4:6], start=10)
    (pool / "broken.png").write_bytes(b"not an image at all")
    second = curate_json("score", *common)
    assert second["scored"] == 2 and second["embedding"]["embedded"] == 2 and second["embedding"]["failed"] == 0
    third = curate_json("score", *common)
    assert third["scored"] == 0 and third["embedding"]["embedded"] == 0 and third["embedding"]["device"] is None
    with Store.open(db) as store:
        (enc,) = _encoders(store)
        embedded = store.scores.embedded_items(enc.id)
        assert len(embedded) == 6 and not store.items.any_to_embed(1, enc.id)
        assert not any(p.endswith("broken.png") for p in store.items.paths(1, [int(i) for i in embedded]))

    # new preprocessing (or a new file) is a new encoder version, embedded afresh
    other = tmp_path / "other.yaml"
    other.write_text(cfg.read_text().replace(f"imgsz: {IMGSZ}\n  batch", "imgsz: 40\n  batch"))
    fourth = curate_json("score", "--pool", str(pool), "--config", str(other), "--db", db)
    assert fourth["embedding"]["embedded"] == 6 and fourth["embedding"]["model_version"] != version


def _encoders(store: Store) -> list:
    """The encoder records of a database (by the registry's own lookup, for each embedded version id)."""
    from sqlalchemy import select

    from store.schema import ModelVersion

    with store.db.tx(write=False) as conn:
        ids = [int(r[0]) for r in conn.execute(select(ModelVersion.id).where(ModelVersion.status == "encoder"))]
    records = [store.models.by_id(i) for i in ids]
    return [r for r in records if r is not None]


@pytest.mark.parametrize("strategy", ["kcenter", "hybrid", "kmeans"])
def test_near_duplicates_and_diversity_use_the_encoders_vectors(
    tmp_path: Path, thumb: tuple[Path, Path], strategy: str
) -> None:
    """red | blue and blue | red: far apart for the thumbnail classifier, one vector for the mean-colour encoder."""
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS)
    pair = {p.name for p in split_pair(pool)}
    encoder = save_scripted(MeanColourEncoder(), tmp_path / "meancolour.ts")
    args = ["--pool", str(pool), "--model", str(model), "--budget", "8", "--strategy", strategy]

    plain_cfg = config(tmp_path, thumb_cfg, None)
    plain = curate_json(
        "select", "--no-push", *args, "--config", str(plain_cfg), "--db", f"sqlite:///{tmp_path / 'a.db'}"
    )
    assert plain["selected"] == 8 and plain["skipped_duplicates"] == 0

    db = f"sqlite:///{tmp_path / 'b.db'}"
    cfg = config(tmp_path, thumb_cfg, encoder)
    with_encoder = curate_json("select", "--no-push", *args, "--config", str(cfg), "--db", db)
    chosen = {Path(r["path"]).name for r in with_encoder["items"]}
    assert with_encoder["selected"] == 7 and with_encoder["skipped_duplicates"] == 1
    assert len(chosen & pair) == 1, chosen
    with Store.open(db) as store, store.db.tx(write=False) as conn:
        from sqlalchemy import select

        from store.schema import Selection

        options = conn.execute(select(Selection.options).where(Selection.id == with_encoder["selection_id"])).scalar()
    assert options["embedding_model"] == with_encoder["scoring"]["embedding"]["model_version"]

    # the copy left is a duplicate of the taken one: a second selection finds nothing it may select
    again = runner.invoke(app, ["select", "--no-push", *args, "--config", str(cfg), "--db", db])
    assert again.exit_code == ExitCode.NOTHING_TO_SELECT, again.stderr
    assert "near-duplicate" in again.stderr


def test_badge_keeps_the_scoring_models_embeddings(tmp_path: Path, thumb: tuple[Path, Path]) -> None:
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS)
    split_pair(pool)
    encoder = save_scripted(MeanColourEncoder(), tmp_path / "meancolour.ts")
    cfg = config(tmp_path, thumb_cfg, encoder)
    args = ["--pool", str(pool), "--model", str(model), "--budget", "8", "--strategy", "badge", "--config", str(cfg)]
    data = curate_json("select", "--no-push", *args, "--db", f"sqlite:///{tmp_path / 'c.db'}")
    # the model's features tell the pair apart: nothing is suppressed, although the encoder's vectors coincide
    assert data["selected"] == 8 and data["skipped_duplicates"] == 0
    assert data["scoring"]["embedding"]["embedded"] == 8


def test_an_item_without_an_encoder_embedding_is_left_out_and_reported(
    tmp_path: Path, thumb: tuple[Path, Path]
) -> None:
    from curation.config import load_settings
    from curation.jobs.embed import registered_encoder
    from curation.selection import run_selection

    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS)
    encoder = conv_encoder(tmp_path)
    cfg = config(tmp_path, thumb_cfg, encoder)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json("score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db)
    settings = load_settings(cfg, {"db": db, "pool.path": str(pool), "strategy.name": "kcenter"}, environ={})
    with Store.open(db) as store:
        enc = registered_encoder(store, settings)
        mv = store.models.current()
        assert enc is not None and mv is not None
        from sqlalchemy import delete

        from store.schema import Embedding

        with store.db.tx() as conn:  # as if the encoder had not reached two items yet (an interrupted run)
            conn.execute(delete(Embedding).where(Embedding.model_version_id == enc.id, Embedding.item_id <= 2))
        result = run_selection(store, 1, mv, settings.strategy, 6, encoder=enc)
    assert {i.item_id for i in result.items}.isdisjoint({1, 2}) and len(result.items) == 4
    assert any("left out 2 item(s) without an embedding by embedding.model" in w for w in result.warnings)


def test_a_bad_encoder_file_is_one_error_naming_it(tmp_path: Path, thumb: tuple[Path, Path]) -> None:
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS[:2])
    pickle_file = tmp_path / "weights.pt"
    torch.save(SeededConvEncoder().state_dict(), pickle_file)  # a pickle: never loaded
    text_file = tmp_path / "notes.torchscript"
    text_file.write_text("hello")
    wrong_shape = save_scripted(PixelsOut(), tmp_path / "pixels.torchscript")
    expected = {
        pickle_file: "is not a TorchScript archive",
        text_file: "is not a TorchScript archive",
        wrong_shape: "expected (N, D) features",
        tmp_path / "missing.ts": "cannot be read",
    }
    for i, (path, message) in enumerate(expected.items()):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        cfg = config(folder, thumb_cfg, path)
        db = f"sqlite:///{folder / 'c.db'}"
        result = runner.invoke(
            app, ["score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db]
        )
        assert result.exit_code == ExitCode.NOT_FOUND, (path, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and str(path) in result.stderr.replace("\n", "") and message in result.stderr
        assert "Traceback" not in result.stderr


def test_an_onnx_encoder_gives_the_torchscript_encoders_vectors(tmp_path: Path, thumb: tuple[Path, Path]) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS[:3])
    split_pair(pool)
    torch.manual_seed(0)
    net = SeededConvEncoder().eval()
    scripted = tmp_path / "conv.torchscript"
    torch.jit.script(net).save(str(scripted))
    exported = tmp_path / "conv.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, IMGSZ, IMGSZ),),
        str(exported),
        input_names=["x"],
        output_names=["features"],
        dynamic_axes={"x": {0: "batch"}, "features": {0: "batch"}},
        dynamo=False,
    )
    found = {}
    for path in (scripted, exported):
        folder = tmp_path / path.suffix.lstrip(".")
        folder.mkdir()
        db = f"sqlite:///{folder / 'c.db'}"
        cfg = config(folder, thumb_cfg, path)
        data = curate_json("score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db)
        assert data["embedding"]["embedded"] == 5
        with Store.open(db) as store:
            (enc,) = _encoders(store)
            assert enc.format == ("onnx" if path.suffix == ".onnx" else "torchscript")
            ids = store.scores.embedded_items(enc.id)
            found[path.suffix] = (
                store.items.content_ids([int(i) for i in ids]),
                store.scores.embeddings(enc.id, ids, 16)[0],
            )
    (ts_ids, ts_vectors), (onnx_ids, onnx_vectors) = found[".torchscript"], found[".onnx"]
    order = [ts_ids.index(c) for c in onnx_ids]
    np.testing.assert_allclose(onnx_vectors, ts_vectors[order], atol=2e-3)


def test_an_onnx_encoder_without_onnxruntime_says_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from curation.config import load_settings
    from curation.scoring.encoder import load_encoder

    path = tmp_path / "enc.onnx"
    path.write_bytes(b"onnx bytes")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what Python's import system does for a blocked module
    settings = load_settings(None, {"embedding.model": str(path)}, environ={})
    with pytest.raises(RuntimeUnavailableError, match="install onnxruntime") as caught:
        load_encoder(settings.embedding, settings.scoring)
    assert str(path) in str(caught.value) and caught.value.exit_code == ExitCode.USAGE


def test_an_idle_rerun_imports_no_torch(tmp_path: Path, thumb: tuple[Path, Path]) -> None:
    model, thumb_cfg = thumb
    pool = tmp_path / "pool"
    colour_pool(pool, COLOURS[:3])
    cfg = config(tmp_path, thumb_cfg, conv_encoder(tmp_path))
    db = f"sqlite:///{tmp_path / 'c.db'}"
    curate_json("score", "--pool", str(pool), "--model", str(model), "--config", str(cfg), "--db", db)
    code, heavy, stdout, stderr = heavy_imports(
        ["score", "--json", "--pool", str(pool), "--config", str(cfg), "--db", db], tmp_path
    )
    assert code == 0, stderr
    assert "torch" not in heavy, f"an idle score with embedding.model imported {heavy}"
    idle = json.loads(stdout)
    assert idle["embedding"]["embedded"] == 0 and idle["embedding"]["device"] is None


def test_the_registry_never_treats_an_encoder_as_a_scoring_model(db_url: str) -> None:
    with Store.open(db_url) as store:
        enc = store.models.register_encoder(
            version="enc-encoder-abc",
            source="/x/enc.ts",
            format="torchscript",
            imgsz=224,
            embedding_dim=8,
            digest="d" * 64,
        )
        again = store.models.register_encoder(
            version="renamed", source="/y/enc.ts", format="torchscript", imgsz=224, embedding_dim=8, digest="d" * 64
        )
        assert again.id == enc.id and store.models.encoder("d" * 64) == enc
        assert store.models.get(enc.version) is None and store.models.by_digest("d" * 64) is None
        assert store.models.versions() == [] and store.models.latest_from("/x/enc.ts") is None
        with pytest.raises(RegistryConflictError):
            store.models.set_current(enc.id)
        with pytest.raises(RegistryConflictError):
            store.models.register(
                version=enc.version,
                source="m.pt",
                format="ultralytics",
                task="classify",
                class_names=["a"],
                imgsz=64,
                embedding_dim=None,
            )
        assert store.models.current() is None

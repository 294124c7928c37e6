"""``scoring.runtime``: OpenVINO and ONNX Runtime give torch fp32's outputs (same shapes, same rankings, boxes within
0.5 px, same selections), the export cache is reused, rebuilt when stale and never trusted when tampered with, and
a runtime that is not installed is one clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli import app
from curation.config import ModelSettings
from curation.errors import ConfigError, ExitCode, RuntimeUnavailableError
from curation.scoring import exported
from curation.scoring.exported import cached_export, ensure_export, load_exported, resolve_runtime
from curation.scoring.runtime import DetectionOptions, load_model, read_ultralytics
from tests.test_cli import assert_one_clean_error

runner = CliRunner()
CPU = torch.device("cpu")
AVAILABLE = [name for name in exported.EXPORTED if exported.is_installed(name)]
needs_runtimes = pytest.mark.skipif(not AVAILABLE, reason="neither curate[openvino] nor curate[onnx] is installed")


CHILD_ENV = "CURATE_TEST_OWN_PROCESS"


def ran_in_own_process(request: pytest.FixtureRequest, name: str) -> bool:
    """OpenVINO loaded into the suite's process crashed it later (a segfault in a test that trained or scored
    afterwards, also seen at teardown with ONNX Runtime loaded): its cases run in a child pytest of their own.
    True when this call ran the case there (the caller is then done)."""
    if name != "openvino" or os.environ.get(CHILD_ENV):
        return False
    done = subprocess.run(
        [sys.executable, "-m", "pytest", request.node.nodeid, "-q", "-p", "no:cacheprovider"],
        env={**os.environ, CHILD_ENV: "1"},
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return True


def curate(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- which runtime -----------------------------------------------------------------------------------------------


def test_auto_picks_onnxruntime_on_the_cpu_and_openvino_only_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"openvino": True, "onnxruntime": True}
    monkeypatch.setattr(exported, "is_installed", lambda name: installed[name])
    assert resolve_runtime("auto", CPU, "ultralytics") == "onnxruntime"
    installed["onnxruntime"] = False
    assert resolve_runtime("auto", CPU, "ultralytics") == "torch"  # OpenVINO is never picked by auto
    assert resolve_runtime("openvino", CPU, "ultralytics") == "openvino"
    installed.update(openvino=True, onnxruntime=True)
    assert resolve_runtime("auto", torch.device("cuda"), "ultralytics") == "torch"
    assert resolve_runtime("auto", CPU, "torchscript") == "torch"
    assert resolve_runtime("torch", CPU, "ultralytics") == "torch"


def test_a_runtime_that_is_not_installed_names_its_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exported, "_missing", lambda name: list(exported._PACKAGES[name]))
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'curate\[onnx\]'"):
        resolve_runtime("onnxruntime", CPU, "ultralytics")
    with pytest.raises(RuntimeUnavailableError, match=r"pip install 'curate\[openvino\]'"):
        resolve_runtime("openvino", CPU, "ultralytics")
    with pytest.raises(ConfigError, match="TorchScript"):
        resolve_runtime("openvino", CPU, "torchscript")


def test_cli_runtime_not_installed_is_exit_2(tmp_path: Path, pool_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exported, "_missing", lambda name: list(exported._PACKAGES[name]))
    db = f"sqlite:///{tmp_path / 'c.db'}"
    args = ("--pool", str(pool_dir), "--model", "yolov8n-cls.yaml", "--device", "cpu", "--db", db)
    code, _, err = curate("score", *args, "--runtime", "onnxruntime")
    assert_one_clean_error(code, err, ExitCode.USAGE, "scoring.runtime onnxruntime", "curate[onnx]")
    code, _, err = curate("score", *args, "--runtime", "tensorflow")
    assert_one_clean_error(code, err, ExitCode.USAGE, "scoring.runtime", "--runtime")


# -- the export cache --------------------------------------------------------------------------------------------


@pytest.mark.heavy
@needs_runtimes
def test_export_is_reused_rebuilt_when_stale_and_never_trusted_when_tampered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = AVAILABLE[-1]  # onnxruntime when present: the faster export
    info, net = read_ultralytics(ModelSettings(path="yolov8n-cls.yaml", imgsz=32), "yolov8n-cls.yaml")
    cache = tmp_path / "cache"
    files = ensure_export(info, net, name, cache)
    folder = files[0].parent
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["key"]["digest"] == info.digest and manifest["key"]["version"] == info.version
    stamp = files[0].stat().st_mtime_ns
    assert ensure_export(info, net, name, cache) == files and files[0].stat().st_mtime_ns == stamp  # reused

    key = exported.export_key(info, name)
    with files[0].open("r+b") as fh:  # tampered with: the recorded digest no longer matches
        fh.seek(100)
        fh.write(b"\0\0\0\0")
    assert cached_export(folder, key) is None
    files = ensure_export(info, net, name, cache)
    assert cached_export(folder, key) == files

    os.chmod(files[0], 0o666)  # writable by anyone: not ours to trust
    assert cached_export(folder, key) is None
    files = ensure_export(info, net, name, cache)
    assert cached_export(folder, key) == files

    elsewhere = tmp_path / "planted"  # a folder linked into the cache is never used, even with a valid manifest
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    assert cached_export(folder, key) is None
    files = ensure_export(info, net, name, cache)
    assert not folder.is_symlink() and cached_export(folder, key) == files

    monkeypatch.setattr(exported, "EXPORT_FORMAT", exported.EXPORT_FORMAT + 1)  # stale: another export format
    assert cached_export(folder, exported.export_key(info, name)) is None
    rebuilt = ensure_export(info, net, name, cache)
    assert json.loads((folder / "export.json").read_text())["key"]["export_format"] == exported.EXPORT_FORMAT
    assert cached_export(folder, exported.export_key(info, name)) == rebuilt
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [folder.name]


@pytest.mark.heavy
@needs_runtimes
def test_export_cache_sits_beside_the_weights(tiny_cls_model: Path) -> None:
    runtime = load_exported(ModelSettings(path=str(tiny_cls_model)), AVAILABLE[-1], CPU, "fp32")
    assert runtime.files[0].parent.parent == tiny_cls_model.parent / exported.CACHE_DIR_NAME


# -- same outputs ------------------------------------------------------------------------------------------------


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _score_all(model: Path, pool: Path, runtime: str, tmp_path: Path) -> tuple[dict, dict]:
    db = f"sqlite:///{tmp_path / f'{runtime}.db'}"
    code, out, err = curate(
        "select", "--no-push", "--json", "--pool", str(pool), "--model", str(model), "--budget", "8",
        "--strategy", "hybrid", "--device", "cpu", "--runtime", runtime, "--db", db,
    )  # fmt: skip
    assert code == 0, err
    return json.loads(out), {"db": db}


@pytest.mark.slow
@needs_runtimes
@pytest.mark.parametrize("name", exported.EXPORTED)
def test_classifier_outputs_and_selection_match_torch_fp32(
    name: str, request: pytest.FixtureRequest, tiny_cls_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name not in AVAILABLE:
        pytest.skip(f"{name} not installed")
    if ran_in_own_process(request, name):
        return
    from curation.devtools.synthetic import make_pool

    pool = tmp_path / "pool"
    paths = sorted(make_pool(pool, n=48, size=72, seed=11))
    monkeypatch.setenv("CURATE_SCORING__PRECISION", "fp32")
    reference, _ = _score_all(tiny_cls_model, pool, "torch", tmp_path)
    other, _ = _score_all(tiny_cls_model, pool, name, tmp_path)
    assert other["scoring"]["runtime"] == name and reference["scoring"]["runtime"] == "torch"
    assert other["selected"] == reference["selected"] == 8
    assert [r["item_id"] for r in other["items"]] == [r["item_id"] for r in reference["items"]]

    # the arrays themselves: probabilities, embeddings, shapes
    from curation.scoring.engine import ScoreJob, inferred_batches

    jobs = [ScoreJob(i, p) for i, p in enumerate(paths)]
    torch_rt = load_model(ModelSettings(path=str(tiny_cls_model)), CPU, "fp32")
    other_rt = load_exported(ModelSettings(path=str(tiny_cls_model)), name, CPU, "fp32")
    got = {}
    for rt in (torch_rt, other_rt):
        outs = [o for _, batch in inferred_batches(rt, jobs, 16) for o in batch]
        got[rt.name] = outs
    ref, out = got["torch"], got[name]
    assert len(ref) == len(out) == len(paths)
    probs_a = np.stack([o.probs for o in ref])
    probs_b = np.stack([o.probs for o in out])
    assert probs_a.shape == probs_b.shape and np.abs(probs_a - probs_b).max() < 1e-4
    emb_a = np.stack([o.embedding for o in ref])
    emb_b = np.stack([o.embedding for o in out])
    assert emb_a.shape == emb_b.shape and np.abs(emb_a - emb_b).max() < 1e-4
    entropy = lambda p: -(p * np.log(np.clip(p, 1e-12, 1))).sum(1)  # noqa: E731
    assert _spearman(entropy(probs_a), entropy(probs_b)) >= 0.99


@pytest.mark.slow
@needs_runtimes
@pytest.mark.parametrize("name", exported.EXPORTED)
@pytest.mark.parametrize("task", ["detect", "segment"])
def test_detector_boxes_within_half_a_pixel(
    task: str, name: str, request: pytest.FixtureRequest, tiny_det_model: Path, tiny_seg_model: Path, tmp_path: Path
) -> None:
    if name not in AVAILABLE:
        pytest.skip(f"{name} not installed")
    if ran_in_own_process(request, name):
        return
    from curation.devtools.synthetic import make_detection_dataset
    from curation.scoring.engine import ScoreJob, inferred_batches
    from curation.scoring.images import original_size

    model = tiny_det_model if task == "detect" else tiny_seg_model
    data = make_detection_dataset(tmp_path / "data", n_train=12, n_val=4, size=96, seed=5, segment=task == "segment")
    paths = sorted(p for p in data.parent.rglob("*") if p.suffix in (".png", ".jpg"))[:12]
    jobs = [ScoreJob(i, p, *original_size(p)) for i, p in enumerate(paths)]
    options = DetectionOptions(conf=0.05)
    ref_rt = load_model(ModelSettings(path=str(model)), CPU, "fp32", options)
    ref = [o for _, batch in inferred_batches(ref_rt, jobs, 4) for o in batch]
    assert sum(len(o.boxes) for o in ref) > 0, "the tiny model finds no box: the comparison would be empty"
    rt = load_exported(ModelSettings(path=str(model)), name, CPU, "fp32", options)
    out = [o for _, batch in inferred_batches(rt, jobs, 4) for o in batch]
    for a, b in zip(ref, out, strict=True):
        assert a.boxes.shape == b.boxes.shape, name
        assert a.box_scores.shape == b.box_scores.shape, name
        assert a.embedding.shape == b.embedding.shape and np.abs(a.embedding - b.embedding).max() < 1e-4
        if len(a.boxes):
            assert np.abs(a.boxes - b.boxes).max() <= 0.5, name
            assert np.abs(a.box_scores - b.box_scores).max() < 1e-3, name
        assert len(a.polygons) == len(b.polygons), name
        if task == "segment":
            assert len(a.polygons) == len(a.boxes)

"""The pure decisions behind ``ls://`` pools (no server): where a task's image may be read from, the project's
image key, and the pool boundary."""

from __future__ import annotations

import pytest

from curation.config import load_settings
from curation.errors import ConfigError, PoolError
from curation.jobs.score import with_pool_project
from curation.labelstudio.images import pool_task_image
from curation.labelstudio.pool import interface_of
from curation.scoring.pool import LabelStudioPool, item_location, resolve_pool
from store.labels import _location

LS = "http://127.0.0.1:8080"


def kind(value: object, hosts: tuple[str, ...] = ()) -> tuple[str, str | None]:
    image = pool_task_image(value, ls_url=LS, allowed_hosts=hosts)
    return image.kind, image.url if image.kind != "refused" else image.reason


def test_task_images_are_read_only_from_label_studio_storage_or_allowed_hosts() -> None:
    assert kind("/data/local-files/?d=pool/a.jpg") == ("label_studio", "/data/local-files/?d=pool/a.jpg")
    assert kind("/data/upload/3/abc-a.png") == ("label_studio", "/data/upload/3/abc-a.png")
    assert kind(f"{LS}/data/upload/3/a.png") == ("label_studio", "/data/upload/3/a.png")
    assert kind("s3://bucket/cam/a.jpg") == ("s3", "s3://bucket/cam/a.jpg")
    assert kind("https://cdn.example/a.jpg", ("cdn.example",)) == ("http", "https://cdn.example/a.jpg")
    for refused in (
        "http://169.254.169.254/latest/meta-data",  # cloud metadata: never
        "https://cdn.example/a.jpg",  # not allowed (no allowed hosts)
        "http://127.0.0.1:8081/a.jpg",  # another port of the Label Studio host
        "//evil.example/a.jpg",
        "gs://bucket/a.jpg",
        "file:///etc/passwd",
        "data:image/png;base64,AAAA",
        "/data/upload/../../etc/passwd",
        "relative/a.jpg",
        "",
        None,
        42,
    ):
        got = kind(refused)
        assert got[0] == "refused", (refused, got)
    assert "allowed_hosts" in (kind("https://cdn.example/a.jpg")[1] or "")


def test_the_image_key_comes_from_the_labeling_config() -> None:
    parsed = {"label": {"type": "Choices", "to_name": ["img"], "inputs": [{"type": "Image", "value": "photo"}]}}
    assert interface_of(parsed) == ("classify", "photo")
    boxes = {"b": {"type": "RectangleLabels", "inputs": [{"type": "Image", "value": "$image"}]}}
    assert interface_of(boxes) == ("detect", "image")
    with pytest.raises(PoolError, match="no image"):
        interface_of({"t": {"type": "TextArea", "inputs": [{"type": "Text", "value": "text"}]}})


def test_ls_pools_are_validated_once_and_name_their_project() -> None:
    pool = resolve_pool("ls://Team frames ")
    assert isinstance(pool, LabelStudioPool) and pool.project == "Team frames" and pool.kind == "label_studio"
    with pytest.raises(PoolError):
        resolve_pool("ls://")
    assert item_location(pool.root, "/data/upload/1/a.png") == "/data/upload/1/a.png"
    assert _location("ls://Team frames", "/data/upload/1/a.png") == "/data/upload/1/a.png"
    assert _location("s3://b/p/", "k.jpg") == "s3://b/p/k.jpg"
    assert _location("/pool", "https://h/x.jpg") == "https://h/x.jpg"
    assert _location("/pool", "a/b.jpg") == "/pool/a/b.jpg"

    settings = with_pool_project(load_settings(overrides={"pool.path": "ls://42"}, environ={}))
    assert settings.label_studio.project == "42"
    with pytest.raises(ConfigError, match="different projects"):
        with_pool_project(load_settings(overrides={"pool.path": "ls://42", "label_studio.project": "x"}, environ={}))

from __future__ import annotations

from pathlib import Path

import pytest

from curation.config import load_cli_settings, load_settings
from curation.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_any_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings(None, {}, environ={})
    assert s.db == "sqlite:///curate.db"
    assert s.scoring.batch_size is None  # chosen per task and device at run time
    assert s.strategy.detection.empty == 1.0


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "scoring:\n  batch_size: 8\n  device: cpu\nstrategy:\n  name: margin\n")
    env = {"CURATE_SCORING__BATCH_SIZE": "16", "CURATE_STRATEGY__SEED": "5"}
    s = load_cli_settings(cfg, {("scoring", "batch_size"): (64, "--batch-size")}, environ=env)
    assert s.scoring.batch_size == 64  # flag
    assert load_settings(cfg, {"scoring.batch_size": 32}, environ=env).scoring.batch_size == 32  # Python override
    assert s.strategy.seed == 5  # env over default
    assert s.strategy.name == "margin"  # file over default
    assert s.scoring.device == "cpu"
    s = load_settings(cfg, {}, environ=env)
    assert s.scoring.batch_size == 16  # env over file
    s = load_settings(cfg, {}, environ={})
    assert s.scoring.batch_size == 8  # file over default


def test_unset_flags_do_not_override(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "db: sqlite:///x.db\n")
    s = load_cli_settings(cfg, {("db",): (None, "--db")}, environ={})
    assert s.db == f"sqlite:///{(tmp_path / 'x.db').resolve()}"  # the file's value (relative to the file)


def test_error_names_key_and_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "scoring:\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {}, environ={})
    message = str(info.value)
    assert "scoring.batch_size" in message and str(cfg) in message and "lots" in message


def test_error_names_env_variable_and_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CURATE_SCORING__WORKERS"):
        load_settings(None, {}, environ={"CURATE_SCORING__WORKERS": "-3"})
    with pytest.raises(ConfigError, match="--batch-size"):
        load_cli_settings(None, {("scoring", "batch_size"): (0, "--batch-size")}, environ={})


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "scoring:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'scoring.batchsize' in .*did you mean 'batch_size'"):
        load_settings(cfg, {}, environ={})
    with pytest.raises(ConfigError, match="CURATE_SCORNG__BATCH_SIZE"):
        load_settings(None, {}, environ={"CURATE_SCORNG__BATCH_SIZE": "1"})


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "scoring:\n  batch_size: [1\n")
    with pytest.raises(ConfigError, match=r"invalid YAML in config file .*c\.yaml \(line \d+"):
        load_settings(cfg, {}, environ={})


def test_non_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must contain a mapping"):
        load_settings(write(tmp_path / "c.yaml", "- a\n- b\n"), {}, environ={})
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml", {}, environ={})


def test_label_studio_env_aliases_and_secret(tmp_path: Path) -> None:
    env = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "s3cr3t-token"}
    s = load_settings(None, {}, environ=env)
    assert s.label_studio.url == "http://ls:8080"
    assert s.label_studio.api_key is not None and s.label_studio.api_key.get_secret_value() == "s3cr3t-token"
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())
    # curate's own variable wins over Label Studio's
    s = load_settings(None, {}, environ={**env, "CURATE_LABEL_STUDIO__URL": "http://other:1"})
    assert s.label_studio.url == "http://other:1"


def test_relative_pool_path_is_relative_to_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "conf").mkdir()
    cfg = write(tmp_path / "conf" / "c.yaml", "pool:\n  path: ../images\n")
    monkeypatch.chdir("/")
    s = load_settings(cfg, {}, environ={})
    assert s.pool.path == str((tmp_path / "images").resolve())


def test_every_relative_path_in_a_config_file_is_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "best.pt").write_bytes(b"")
    cfg = write(
        conf / "c.yaml",
        "db: sqlite:///state/curate.db\nmodel:\n  path: best.pt\nselect:\n  out: sel.jsonl\n"
        "train:\n  models_dir: models\nlabel_studio:\n  document_root: ../served\n",
    )
    monkeypatch.chdir("/")
    s = load_settings(cfg, {}, environ={})
    root = conf.resolve()
    assert s.db == f"sqlite:///{root / 'state' / 'curate.db'}"
    assert s.model.path == str(root / "best.pt")
    assert s.select.out == str(root / "sel.jsonl")
    assert s.train.models_dir == str(root / "models")
    assert s.label_studio.document_root == str(tmp_path.resolve() / "served")
    # an architecture name is not a file beside the config: left for Ultralytics to resolve
    other = write(conf / "d.yaml", "model:\n  path: yolov8n-cls.yaml\ndb: postgresql+psycopg://u:pw@h/db\n")
    s = load_settings(other, {}, environ={})
    assert s.model.path == "yolov8n-cls.yaml" and s.db == "postgresql+psycopg://u:pw@h/db"
    # flags and environment variables stay relative to the working directory
    s = load_cli_settings(cfg, {("select", "out"): ("x.csv", "--out")}, environ={"CURATE_DB": "sqlite:///here.db"})
    assert s.select.out == "x.csv" and s.db == "sqlite:///here.db"
    # so do Python overrides
    s = load_settings(cfg, {"select.out": "x.csv", "model": {"path": "best.pt"}}, environ={})
    assert s.select.out == "x.csv" and s.model.path == "best.pt"


def test_detection_empty_policy_values() -> None:
    assert (
        load_settings(None, {}, environ={"CURATE_STRATEGY__DETECTION__EMPTY": "exclude"}).strategy.detection.empty
        == "exclude"
    )
    assert (
        load_settings(None, {}, environ={"CURATE_STRATEGY__DETECTION__EMPTY": "0.25"}).strategy.detection.empty == 0.25
    )
    with pytest.raises(ConfigError, match="must be a number >= 0 or 'exclude'"):
        load_settings(None, {}, environ={"CURATE_STRATEGY__DETECTION__EMPTY": "-1"})


def test_curate_config_env_selects_file(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "scoring:\n  batch_size: 3\n")
    assert load_settings(None, {}, environ={"CURATE_CONFIG": str(cfg)}).scoring.batch_size == 3


def test_shipped_configs_are_valid() -> None:
    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for cfg in configs:
        load_settings(cfg, {}, environ={})


def test_malformed_json_in_an_environment_variable_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CURATE_STRATEGY__OPTIONS is not valid"):
        load_settings(None, {}, environ={"CURATE_STRATEGY__OPTIONS": "{bad json"})


def test_default_yaml_is_the_built_in_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/default.yaml documents every key with its built-in default: the same keys, the same values."""
    import yaml

    monkeypatch.chdir(tmp_path)
    documented = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "default.yaml").read_text())
    built_in = load_settings(None, {}, environ={}).model_dump(mode="json")

    def flat(data: object, prefix: str = "") -> dict[str, object]:
        if isinstance(data, dict):
            return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): data}

    assert flat(documented) == flat(built_in)
    assert len(flat(built_in)) > 40  # the comparison walked the whole tree


# -- the Python API: plain overrides -----------------------------------------------------------------------------


def test_dotted_and_nested_overrides_mean_the_same(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "pool:\n  hash_workers: 2\nselect:\n  budget: 7\n")
    dotted = load_settings(cfg, {"pool.path": "/data/images", "select.budget": 10}, environ={})
    nested = load_settings(cfg, {"pool": {"path": "/data/images"}, "select": {"budget": 10}}, environ={})
    assert dotted.model_dump() == nested.model_dump()
    assert dotted.pool.path == "/data/images" and dotted.select.budget == 10
    assert dotted.pool.hash_workers == 2  # a nested mapping merges into the file's section, not replacing it


def test_mixed_overrides_merge_and_leave_the_callers_dicts_alone() -> None:
    options = {"hybrid": {"weight": 0.3}}
    given = {"strategy": {"name": "hybrid", "options": options}, "strategy.options.hybrid.weight": 0.7}
    s = load_settings(None, given, environ={})
    assert s.strategy.name == "hybrid" and s.strategy.options_for("hybrid")["weight"] == 0.7
    assert options == {"hybrid": {"weight": 0.3}}  # the caller's mapping was copied, not edited


def test_an_override_is_taken_as_given_none_included(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "select:\n  out: sel.jsonl\n")
    assert load_settings(cfg, {}, environ={}).select.out is not None
    assert load_settings(cfg, {"select.out": None}, environ={}).select.out is None


def test_override_errors_name_the_override() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'select.budgt' \(from override 'select.budgt'\); did"):
        load_settings(None, {"select.budgt": 3}, environ={})
    with pytest.raises(ConfigError, match=r"invalid config key 'select.budget' \(from override 'select'\)"):
        load_settings(None, {"select": {"budget": 0}}, environ={})
    with pytest.raises(ConfigError, match="not a config key name"):
        load_settings(None, {"select..budget": 3}, environ={})
    with pytest.raises(ConfigError, match="override keys are config key names"):
        load_settings(None, {("select", "budget"): (3, "--budget")}, environ={})  # type: ignore[dict-item]

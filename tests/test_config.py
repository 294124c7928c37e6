from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

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


def test_the_servers_document_root_is_the_default_for_document_root(tmp_path: Path) -> None:
    env = {"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "/srv/images"}
    assert load_settings(None, {}, environ=env).label_studio.document_root == "/srv/images"
    assert load_settings(None, {}, environ={}).label_studio.document_root is None
    cfg = write(tmp_path / "c.yaml", "label_studio:\n  document_root: /data\n")
    assert load_settings(cfg, {}, environ=env).label_studio.document_root == "/data"  # the file wins
    both = {**env, "CURATE_LABEL_STUDIO__DOCUMENT_ROOT": "/mnt"}
    assert load_settings(cfg, {}, environ=both).label_studio.document_root == "/mnt"


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


# -- strategy options: checked with their declared types at load (issue 17, item 8) -----------------------------


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        (
            "hybrid: {weight: abc}",
            ["invalid config key 'strategy.options.hybrid.weight'", "expected a number, got 'abc'"],
        ),
        ("hybrid: {weight: true}", ["'strategy.options.hybrid.weight'", "expected a number, got True"]),
        ("hybrid: {candidates: .inf}", ["'strategy.options.hybrid.candidates'", "expected a finite number"]),
        ("kmeans: {measure: 3}", ["'strategy.options.kmeans.measure'", "expected a string, got 3"]),
        (
            "hybrid: {wieght: 0.3}",
            [
                "unknown config key 'strategy.options.hybrid.wieght'",
                "did you mean 'weight'?",
                "valid options: candidates, diversify, measure, pick, weight",
            ],
        ),
        ("random: {weight: 1}", ["unknown config key 'strategy.options.random.weight'", "valid options: none"]),
        ("hybird: {weight: 0.3}", ["unknown config key 'strategy.options.hybird'", "did you mean 'hybrid'?"]),
        ("hybrid: {weight: 2}", ["'strategy.options.hybrid.weight'", "must be in [0, 1]"]),
        ("hybrid: {diversify: sideways}", ["'strategy.options.hybrid'", "sideways", "greedy, kmeans"]),
    ],
)
def test_a_bad_strategy_option_names_its_key_at_load(tmp_path: Path, yaml_text: str, fragments: list[str]) -> None:
    cfg = write(tmp_path / "c.yaml", f"strategy:\n  options:\n    {yaml_text}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {}, environ={})
    for fragment in [*fragments, str(cfg)]:
        assert fragment in str(info.value)


def test_strategy_options_are_converted_to_their_declared_types() -> None:
    env = {"CURATE_STRATEGY__OPTIONS__HYBRID__WEIGHT": "0.25", "CURATE_STRATEGY__OPTIONS__KMEANS__CLUSTERS": "2"}
    s = load_settings(None, {}, environ=env)
    assert s.strategy.options == {"hybrid": {"weight": 0.25}, "kmeans": {"clusters": 2.0}}
    with pytest.raises(ConfigError, match=r"CURATE_STRATEGY__OPTIONS__KMEANS__CLUSTERS\): expected a number"):
        load_settings(None, {}, environ={"CURATE_STRATEGY__OPTIONS__KMEANS__CLUSTERS": "many"})
    s = load_settings(None, {}, environ={"CURATE_STRATEGY__OPTIONS": '{"least-confidence": {}}'})
    assert s.strategy.options == {"least_confidence": {}}  # the registered spelling


def test_an_unknown_strategy_name_is_refused_at_load_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"'strategy.name' \(from option --strategy\): unknown strategy 'hybird'"):
        load_cli_settings(None, {("strategy", "name"): ("hybird", "--strategy")}, environ={})


def test_the_type_check_comes_from_the_signature_so_new_strategies_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import dataclass, field

    import strategies.registry as registry
    from strategies import InvalidOptionError, RandomStrategy

    @dataclass(frozen=True)
    class Newcomer(RandomStrategy):
        rounds: int = 3
        mode: Literal["a", "b"] = "a"
        scale: float | None = None
        name: str = field(default="newcomer", init=False)

    monkeypatch.setattr(registry, "STRATEGIES", {**registry.STRATEGIES, "newcomer": Newcomer})
    assert registry.check_options("newcomer", {"rounds": "4", "scale": None}) == {"rounds": 4, "scale": None}
    for bad, expected in [
        ({"rounds": 2.5}, "expected an integer, got 2.5"),
        ({"mode": "c"}, "expected one of 'a', 'b', got 'c'"),
        ({"scale": "x"}, "expected a number or null, got 'x'"),
    ]:
        with pytest.raises(InvalidOptionError, match=re.escape(expected)) as info:
            registry.get_strategy("newcomer", **bad)
        assert info.value.option == next(iter(bad))


# -- warnings for what is accepted but probably a mistake (issue 17, item 13a) ------------------------------------


def test_a_curate_variable_that_matches_no_key_warns_with_a_suggestion() -> None:
    warnings: list[str] = []
    env = {
        "CURATE_BD": "sqlite:///x.db",
        "CURATE_DB": "sqlite:///y.db",
        "CURATE_CONFIG": "",
        "CURATE_FAILPOINT": "x",
        "CURATE_PAUSEPOINT": "x",
        "CURATE_LS_VENV": "/tmp/v",
        "CURATE_TEST_PG_URL": "postgresql://",
        "CURATE_REQUIRE_POSTGRES": "1",
        "CURATE_SKIP_LABEL_STUDIO": "1",
        "PATH": "/bin",
    }
    load_settings(None, {}, environ=env, warn=warnings.append)
    assert warnings == ["environment variable CURATE_BD matches no config key and is ignored; did you mean CURATE_DB?"]


def test_a_key_given_twice_in_the_config_file_warns_naming_it(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.yaml",
        "select:\n  budget: 3\n  budget: 4\nstrategy:\n  options:\n    hybrid: {weight: 0.2, weight: 0.3}\n",
    )
    warnings: list[str] = []
    s = load_settings(cfg, {}, environ={}, warn=warnings.append)
    assert s.select.budget == 4
    assert warnings == [
        f"duplicate key 'select.budget' in config file {cfg} (line 3): the last value wins",
        f"duplicate key 'strategy.options.hybrid.weight' in config file {cfg} (line 6): the last value wins",
    ]


def test_shipped_configs_load_without_warnings() -> None:
    for cfg in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        warnings: list[str] = []
        load_settings(cfg, {}, environ={}, warn=warnings.append)
        assert warnings == [], cfg

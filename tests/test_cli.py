"""CLI contract: one clear line per error, documented exit codes, no traceback without --debug."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cli import app
from curation.devtools.synthetic import make_pool
from curation.errors import ExitCode

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def small_pool(tmp_path: Path) -> Path:
    make_pool(tmp_path / "pool", n=3, size=32)
    return tmp_path / "pool"


def assert_one_clean_error(code: int, err: str, expected_code: int, *fragments: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err
    error_lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_model_file(tmp_path: Path, small_pool: Path) -> None:
    code, _, err = run(
        "score",
        "--pool",
        str(small_pool),
        "--model",
        str(tmp_path / "nope.pt"),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "model weights not found", "nope.pt", "never downloads")


def test_hub_name_is_not_downloaded(tmp_path: Path, small_pool: Path) -> None:
    code, _, err = run(
        "score", "--pool", str(small_pool), "--model", "yolov8n.pt", "--db", f"sqlite:///{tmp_path / 'c.db'}"
    )
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "yolov8n.pt")


def test_corrupt_weights(tmp_path: Path, small_pool: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run(
        "score", "--pool", str(small_pool), "--model", str(bad), "--db", f"sqlite:///{tmp_path / 'c.db'}"
    )
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "cannot load model", "bad.pt")


def test_bad_pool_path(tmp_path: Path) -> None:
    code, _, err = run(
        "score",
        "--pool",
        str(tmp_path / "nowhere"),
        "--model",
        "yolov8n-cls.yaml",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "pool not found", "nowhere")


def test_bad_config(tmp_path: Path, small_pool: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("scoring:\n  batch_size: -1\n")
    code, _, err = run("score", "--pool", str(small_pool), "--config", str(cfg))
    assert_one_clean_error(code, err, ExitCode.USAGE, "scoring.batch_size", str(cfg))


def test_unknown_strategy_lists_valid_ones(tmp_path: Path, small_pool: Path) -> None:
    code, _, err = run(
        "select",
        "--no-push",
        "--pool",
        str(small_pool),
        "--model",
        "yolov8n-cls.yaml",
        "--strategy",
        "entropie",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_clean_error(code, err, ExitCode.USAGE, "entropie", "entropy", "least_confidence", "random")


def test_unreachable_database(tmp_path: Path, small_pool: Path) -> None:
    code, _, err = run("status", "--db", "postgresql+psycopg://curate:pw-secret@127.0.0.1:1/curate")
    assert_one_clean_error(code, err, ExitCode.DATABASE, "127.0.0.1:1")
    assert "pw-secret" not in err


@pytest.mark.heavy
def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    code, _, err = run("status", "--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "--debug")
    assert code == ExitCode.DATABASE and "Traceback" in err


def test_cuda_requested_without_cuda(tmp_path: Path, small_pool: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(
        "score",
        "--pool",
        str(small_pool),
        "--model",
        "yolov8n-cls.yaml",
        "--device",
        "cuda",
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_clean_error(code, err, ExitCode.USAGE, "CUDA is not available")


def test_status_json_on_empty_database(tmp_path: Path) -> None:
    code, out, err = run("status", "--json", "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert code == 0, err
    data = json.loads(out)
    assert data["counts"]["items"] == 0 and data["model_versions"] == []


def test_out_with_unknown_extension(tmp_path: Path, small_pool: Path) -> None:
    code, _, err = run(
        "select",
        "--no-push",
        "--pool",
        str(small_pool),
        "--model",
        "yolov8n-cls.yaml",
        "--budget",
        "1",
        "--out",
        str(tmp_path / "sel.xlsx"),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_clean_error(code, err, ExitCode.USAGE, "sel.xlsx", ".jsonl or .csv")


@pytest.mark.heavy
def test_csv_out(tmp_path: Path, small_pool: Path) -> None:
    out = tmp_path / "sel.csv"
    code, _, err = run(
        "select",
        "--no-push",
        "--pool",
        str(small_pool),
        "--model",
        "yolov8n-cls.yaml",
        "--budget",
        "2",
        "--out",
        str(out),
        "--db",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert lines[0].startswith("rank,item_id,path,score,strategy") and len(lines) == 3


def _commands() -> list[str]:
    group = get_command(app)
    names: list[str] = []
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(cmd, "commands", None)
        if sub:
            names.extend(f"{name} {s}" for s in sub)
        else:
            names.append(name)
    return names


def test_every_command_has_help_and_is_documented() -> None:
    readme = README.read_text()
    for name in _commands():
        result = runner.invoke(app, [*name.split(), "--help"])
        assert result.exit_code == 0 and len(result.stdout.strip()) > 40, name
        assert re.search(rf"curate {re.escape(name)}\b", readme), f"`curate {name}` is not in the README"


def test_every_command_takes_the_common_options() -> None:
    for name in _commands():
        help_text = runner.invoke(app, [*name.split(), "--help"], terminal_width=200).stdout
        for option in ("--db", "--config", "--json", "--debug"):
            assert option in help_text, f"curate {name} lacks {option}"


def test_exit_codes_are_documented() -> None:
    readme = README.read_text()
    for name, value in vars(ExitCode).items():
        if name.isupper():
            assert re.search(rf"\|\s*{value}\s*\|", readme), f"exit code {value} ({name}) missing from README"


@pytest.mark.heavy
def test_select_pushes_only_when_label_studio_is_configured(
    tmp_path: Path, small_pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("CURATE_LABEL_STUDIO__URL", raising=False)
    args = ("--pool", str(small_pool), "--model", "yolov8n-cls.yaml", "--budget", "1")
    code, _, err = run("select", *args, "--db", f"sqlite:///{tmp_path / 'a.db'}")
    assert code == 0, err
    assert "Not pushed: no Label Studio URL configured" in err
    code, _, err = run("select", *args, "--push", "--db", f"sqlite:///{tmp_path / 'b.db'}")
    assert_one_clean_error(code, err, ExitCode.USAGE, "no Label Studio URL", "LABEL_STUDIO_URL")
    # naming a project asks for a push: without a URL that is the same clear error, before anything is scored
    db = tmp_path / "c.db"
    code, _, err = run("select", *args, "--project", "demo-queue", "--db", f"sqlite:///{db}")
    assert_one_clean_error(code, err, ExitCode.USAGE, "no Label Studio URL", "LABEL_STUDIO_URL")
    code, out, err = run("status", "--json", "--db", f"sqlite:///{db}")
    assert code == 0, err
    status = json.loads(out)
    assert status["counts"]["items"] == 0 and status["model_versions"] == []


@pytest.mark.heavy
def test_an_empty_pool_is_named_not_silently_scored(tmp_path: Path) -> None:
    pool = tmp_path / "empty"
    (pool / "notes").mkdir(parents=True)
    (pool / "notes" / "readme.txt").write_text("not an image")
    db = f"sqlite:///{tmp_path / 'c.db'}"
    code, _, err = run("score", "--pool", str(pool), "--model", "yolov8n-cls.yaml", "--db", db)
    assert code == 0, err
    assert f"the pool {pool} has no image files (jpg" in err
    code, _, err = run(
        "select", "--no-push", "--budget", "1", "--pool", str(pool), "--model", "yolov8n-cls.yaml", "--db", db
    )
    assert code == 7 and "has no image files" in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["push", "--selection", "99"], "there is no selection #99"),
        (["models", "show", "nope"], "no model version 'nope'"),
        (["models", "promote", "nope"], "no model version 'nope'"),
    ],
)
def test_an_unknown_selection_or_model_version_is_a_usage_error(tmp_path: Path, args: list[str], fragment: str) -> None:
    """A name the user typed that the database does not know is bad usage (2), not "nothing to select" (7) or
    "file not found" (3)."""
    code, _, err = run(*args, "--db", f"sqlite:///{tmp_path / 'c.db'}")
    assert_one_clean_error(code, err, ExitCode.USAGE, fragment)


def test_exit_codes_follow_the_most_specific_error_type() -> None:
    from curation.errors import LabelStudioAuthError, LabelStudioError, exit_code_for
    from store.errors import DatabaseError, DatabaseURLError, LockHeldError
    from strategies.errors import EmptyPoolError, PoolExhaustedError, UnknownStrategyError

    assert exit_code_for(DatabaseURLError("x")) == ExitCode.USAGE  # a DatabaseError, but bad usage
    assert exit_code_for(DatabaseError("x")) == ExitCode.DATABASE
    assert exit_code_for(LockHeldError("x")) == ExitCode.LOCKED
    assert exit_code_for(PoolExhaustedError(3, 5)) == ExitCode.NOTHING_TO_SELECT  # a StrategyError too
    assert exit_code_for(EmptyPoolError("x")) == ExitCode.NOTHING_TO_SELECT
    assert exit_code_for(UnknownStrategyError("x", ["entropy"])) == ExitCode.USAGE
    assert exit_code_for(LabelStudioAuthError("x")) == ExitCode.AUTH
    assert exit_code_for(LabelStudioError("x")) == ExitCode.LABEL_STUDIO
    assert exit_code_for(KeyError("x")) == ExitCode.INTERNAL


def test_version_and_shell_completion() -> None:
    from importlib.metadata import version

    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"curate {version('curate')}"
    code, out, _ = run("--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


def test_under_json_an_error_is_one_json_object_on_stdout_too(tmp_path: Path) -> None:
    code, out, err = run("select", "--json", "--pool", str(tmp_path / "nope"), "--db", f"sqlite:///{tmp_path}/c.db")
    assert_one_clean_error(code, err, ExitCode.NOT_FOUND, "nope")
    assert json.loads(out) == {"error": err.split("Error: ", 1)[1].strip().replace("\n", " "), "exit_code": 3}


def test_progress_in_a_log_is_plain_periodic_lines() -> None:
    from rich.console import Console

    from cli import PlainProgress

    console = Console(record=True, width=200, force_terminal=False)
    progress = PlainProgress(console, interval=0.0)
    progress.start("scoring", 3)
    progress.advance(1, rate=12.5)
    progress.advance(2)
    progress.warn("skipped a.jpg: corrupt")
    progress.finish()
    lines = console.export_text().splitlines()
    assert lines[0] == "scoring: 0/3 (started)"
    assert lines[1].startswith("scoring: 1/3, 12.5 img/s (") and lines[2].startswith("scoring: 3/3, 12.5 img/s (")
    assert lines[3] == "warning: skipped a.jpg: corrupt"
    assert lines[4].startswith("scoring: 3/3, 12.5 img/s (done in ") and len(lines) == 5
    assert "\x1b" not in console.export_text(styles=False)


def test_a_command_that_printed_its_document_then_fails_keeps_one_document(capsys: pytest.CaptureFixture[str]) -> None:
    """``loop`` prints its summary (with the training error in it), then exits 10: stdout stays one document."""
    import typer

    import cli
    from curation.training.trainer import TrainingError

    with pytest.raises(typer.Exit) as exit_info, cli._handled(False, json_out=True):
        cli._print_json({"training_error": "boom"})
        raise TrainingError("training failed: boom")
    assert exit_info.value.exit_code == ExitCode.TRAINING
    assert json.loads(capsys.readouterr().out) == {"training_error": "boom"}


@pytest.mark.heavy
@pytest.mark.parametrize(
    ("out", "fragment"),
    [("sel.txt", "use a .jsonl or .csv file name"), ("afile/sel.jsonl", "is not a folder"), ("adir", "is a folder")],
)
def test_a_bad_out_path_is_refused_before_anything_is_scored_or_selected(
    db_url: str, tmp_path: Path, small_pool: Path, out: str, fragment: str
) -> None:
    """A selection uses its items up: an unwritable --out must not leave a recorded selection without a file."""
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir").mkdir()
    args = ["--pool", str(small_pool), "--model", "yolov8n-cls.yaml", "--db", db_url]
    code, _, err = run("select", "--no-push", "--budget", "1", "--out", str(tmp_path / out), *args)
    assert_one_clean_error(code, err, ExitCode.USAGE, "--out", fragment)
    code, stdout, err = run("status", "--json", "--db", db_url)
    assert code == 0, err
    status = json.loads(stdout)
    assert status["recent_selections"] == [] and status["recent_runs"] == []  # nothing used up, nothing scored
    code, _, err = run("select", "--no-push", "--budget", "1", "--out", str(tmp_path / "sel.jsonl"), *args)
    assert code == 0, err
    assert len((tmp_path / "sel.jsonl").read_text().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--out", "curves.txt", "use a .json file name"), ("--png", "curves.gif", "--png"), ("--out", "f/x.json", "f")],
)
def test_simulate_checks_its_output_paths_before_any_work(
    tmp_path: Path, option: str, value: str, fragment: str
) -> None:
    (tmp_path / "f").write_text("a file where a folder should be")
    dataset = tmp_path / "missing-dataset"  # would be exit 3, later: the output paths are checked first
    code, _, err = run("simulate", "--dataset", str(dataset), option, str(tmp_path / value))
    assert_one_clean_error(code, err, ExitCode.USAGE, option, fragment)


def test_a_wrongly_typed_strategy_option_is_a_usage_error_naming_the_key(tmp_path: Path, small_pool: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("strategy:\n  options:\n    hybrid: {weight: abc}\n")
    code, _, err = run(
        "select", "--no-push", "--pool", str(small_pool), "--model", "yolov8n-cls.yaml", "--config", str(cfg),
        "--db", f"sqlite:///{tmp_path / 'c.db'}",
    )  # fmt: skip
    assert_one_clean_error(
        code, err, ExitCode.USAGE, "strategy.options.hybrid.weight", "expected a number, got 'abc'", str(cfg)
    )
    assert not (tmp_path / "c.db").exists()  # refused at load, before any work


def test_an_unknown_curate_variable_is_a_warning_on_stderr(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["status", "--db", f"sqlite:///{tmp_path / 'c.db'}"], env={"CURATE_BD": "sqlite:///elsewhere.db"}
    )
    assert result.exit_code == 0, result.stderr
    assert "warning: environment variable CURATE_BD matches no config key" in result.stderr
    assert "did you mean CURATE_DB?" in result.stderr


@pytest.mark.heavy
def test_testset_draw_takes_its_pool_and_model_from_the_command_line(tmp_path: Path) -> None:
    # --pool and --model must reach the draw (the Label Studio options once replaced them with "not given")
    from tests.models import save_thumbnail_model

    make_pool(tmp_path / "pool", n=8, size=32, seed=3)
    model, model_cfg = save_thumbnail_model(tmp_path)
    db = f"sqlite:///{tmp_path / 'c.db'}"
    common = ("--pool", str(tmp_path / "pool"), "--model", str(model), "--config", str(model_cfg), "--db", db)
    code, out, err = run("testset", "draw", "--size", "3", "--no-push", "--json", *common)
    assert code == 0, err
    assert json.loads(out)["drawn"] == 3
    code, out, err = run("testset", "status", "--json", "--db", db)
    assert code == 0, err
    assert json.loads(out)["size"] == 3

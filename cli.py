"""``curate`` command line: parse options, call ``curation``, print with rich.

No logic lives here. Library errors are typed; each becomes one ``Error: ...`` line on stderr and a documented
exit code (README, "Exit codes"). ``--debug`` adds the traceback. ``--json`` prints one JSON document on stdout and
nothing else there; progress and warnings go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table as _RichTable

from curation.redact import redact, register_secrets_from_env, safe

# httpx imports its own command-line client (click, pygments: ~0.1 s per process) unless that module is missing, in
# which case it falls back to a stub; curate never runs httpx's command line, so each curate process skips it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

app = typer.Typer(
    name="curate",
    help="Decide which images to label next, and keep Label Studio's queue in that order.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


class SafeConsole(Console):
    """A console that prints no secret and no control character: every string goes through ``curation.redact.safe``
    (file names, task data and server error bodies are untrusted: an ESC would recolour the terminal, a newline
    fake a line). Markup is off by default: paths, reasons and names from the outside print as they are; the few
    styled lines pass markup=True and escape what they interpolate (``escape``)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


class Table(_RichTable):
    """rich's table with every cell, title and caption through ``safe``: a newline in a file name cannot split a
    row, an escape sequence cannot recolour it."""

    def __init__(self, *args: Any, title: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, title=None if title is None else safe(title), **kwargs)

    def add_row(self, *renderables: Any, **kwargs: Any) -> None:
        super().add_row(*(safe(r) if isinstance(r, str) else r for r in renderables), **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "caption" and isinstance(value, str):
            value = safe(value)
        super().__setattr__(name, value)


out_console = SafeConsole(soft_wrap=True, markup=False)
err_console = SafeConsole(stderr=True, soft_wrap=True, markup=False)

# ---------------------------------------------------------------------------------------------------------------------
# Options shared by every command

DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (default sqlite:///curate.db; env CURATE_DB).")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default ./curate.yaml if present).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug detail.")]
PoolOpt = Annotated[
    str | None,
    typer.Option(
        "--pool",
        help="Image directory, manifest (.txt/.csv/.jsonl), s3://bucket/prefix, or ls://<project> (its own tasks).",
    ),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="Ultralytics .pt/.yaml or TorchScript classifier (local file).")
]
ModelVersionOpt = Annotated[
    str | None, typer.Option("--model-version", help="Version tag to record (default: hash of the weights).")
]
ReportedVersionOpt = Annotated[
    str | None,
    typer.Option("--model-version", help="Report counts and scores for this version (default: the current one)."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
RuntimeOpt = Annotated[
    str | None,
    typer.Option("--runtime", help="auto, torch, openvino or onnxruntime (scoring.runtime; README 'Runtimes')."),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine", help="local or ray: score here or on a Ray cluster (scoring.engine, README 'Scaling out')."
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Ray cluster for --engine ray (scoring.ray.address; default RAY_ADDRESS, else a local Ray for the run).",
    ),
]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per forward pass.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Decoding worker processes.")]
RescoreOpt = Annotated[bool, typer.Option("--rescore", help="Score again items this model version already scored.")]
ProjectOpt = Annotated[
    str | None, typer.Option("--project", "-p", help="Label Studio project title or id (label_studio.project).")
]
StrategyOpt = Annotated[str | None, typer.Option("--strategy", "-s", help="Strategy name (see README).")]
BalanceOpt = Annotated[
    bool | None, typer.Option("--balance/--no-balance", help="Per-class quotas so rare classes are not starved.")
]
MetricsFileOpt = Annotated[
    Path | None,
    typer.Option("--metrics-file", help="Write Prometheus metrics of this run to FILE (metrics.textfile)."),
]
MinDistanceOpt = Annotated[
    float | None,
    typer.Option("--min-distance", help="Near-duplicate threshold (cosine distance; 0 = off, default 0.01)."),
]


class RichProgress:
    """``curation.progress.Progress`` on a rich progress bar (stderr); warnings print once each."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.console = console
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        if not self.enabled:
            return
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, rate="")

    def advance(self, amount: int = 1, rate: float | None = None) -> None:
        if self._progress is not None and self._task is not None:
            if rate:
                self._progress.update(self._task, advance=amount, rate=f"{rate:.1f} img/s")
            else:
                self._progress.update(self._task, advance=amount)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task = None

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {escape(safe(message))}", markup=True, highlight=False)


class PlainProgress:
    """Progress for logs (stderr is not a terminal, e.g. cron): one plain line when a phase starts, one every
    ``interval`` seconds while it runs, one when it ends; warnings print once each."""

    def __init__(self, console: Console, interval: float = 10.0) -> None:
        self.console = console
        self.interval = interval
        self._description: str | None = None
        self._total: int | None = None
        self._done = 0
        self._rate: float | None = None
        self._started = self._last = 0.0

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._description, self._total, self._done, self._rate = description, total, 0, None
        self._started = self._last = time.monotonic()
        self._line("started")

    def advance(self, amount: int = 1, rate: float | None = None) -> None:
        if self._description is None:
            return
        self._done += amount
        self._rate = rate or self._rate
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(f"{now - self._started:.0f} s")

    def finish(self) -> None:
        if self._description is not None:
            self._line(f"done in {time.monotonic() - self._started:.1f} s")
            self._description = None

    def warn(self, message: str) -> None:
        self.console.print(f"warning: {message}", highlight=False)

    def _line(self, when: str) -> None:
        parts = []
        if self._total is not None or self._done:  # a phase that counts nothing (training) shows only its time
            parts.append(f"{self._done}/{self._total}" if self._total is not None else str(self._done))
        if self._rate:
            parts.append(f"{self._rate:.1f} img/s")
        counts = ", ".join(parts)
        self.console.print(f"{self._description}: {counts + ' ' if counts else ''}({when})", highlight=False)


@contextmanager
def _handled(debug: bool, json_out: bool = False) -> Iterator[None]:
    """Translate library errors into one line and their documented exit code (``curation.errors.exit_code_for``);
    under ``--json`` the error is also one JSON object on stdout, so a script always gets a document."""
    from curation.errors import ExitCode, exit_code_for

    _printed_json.clear()
    register_secrets_from_env()  # secrets even if the configuration that would register them fails to load
    _redact_log_records()
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt as exc:
        from curation.errors import Terminated

        stopped = isinstance(exc, Terminated)
        code = ExitCode.TERMINATED if stopped else ExitCode.INTERRUPTED
        what = "Terminated" if stopped else "Interrupted"
        message = f"{what}: work done so far is saved; run the command again to continue."
        err_console.print(message)
        if json_out:
            _print_json_error(message, code)
        raise typer.Exit(code) from None
    except Exception as exc:
        code = exit_code_for(exc)
        if debug:
            _print_traceback()
        message = str(exc) if code != ExitCode.INTERNAL else f"unexpected {type(exc).__name__}: {exc}"
        message = safe(message)  # one line, no secret: the one place every error message goes through
        err_console.print(f"[bold red]Error:[/bold red] {escape(message)}", highlight=False, markup=True)
        if code == ExitCode.INTERNAL and not debug:
            err_console.print("This is a bug in curate; rerun with --debug for the traceback.")
        if json_out:
            _print_json_error(message, code)
        raise typer.Exit(code) from None


def _print_traceback() -> None:
    """``--debug``'s traceback, rendered as plain text and passed through ``safe`` line by line: exception messages
    from libraries (an HTTP header, a URL) may hold a secret."""
    import io

    buffer = io.StringIO()
    Console(file=buffer, width=err_console.width, no_color=True, force_terminal=False).print_exception(
        show_locals=False
    )
    sys.stderr.write(safe(buffer.getvalue(), keep_newlines=True))
    sys.stderr.flush()


_log_factory_installed: list[bool] = []


def _redact_log_records() -> None:
    """Every log record (curate's libraries: httpx, the Label Studio SDK, Ultralytics) is made safe where it is
    created, whichever handler prints it."""
    import logging

    if _log_factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        with contextlib.suppress(Exception):  # a malformed record is the logging module's to report, as before
            if isinstance(record.args, tuple) and record.args and isinstance(record.msg, str):
                # keep the arguments' shape: a formatter may unpack them (uvicorn's access log does)
                record.msg = safe(record.msg, keep_newlines=True)
                record.args = tuple(
                    a if isinstance(a, bool | int | float) else safe(str(a), keep_newlines=True) for a in record.args
                )
            else:
                record.msg, record.args = safe(record.getMessage(), keep_newlines=True), None
        return record

    logging.setLogRecordFactory(factory)
    _log_factory_installed.append(True)


Overrides = dict[tuple[str, ...], tuple[Any, str]]


def _settings(config: Path | None, overrides: Overrides) -> Any:
    from curation.config import load_cli_settings

    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False)

    return load_cli_settings(config, overrides, warn=warn)


@contextmanager
def _store(settings: Any, *, lock: bool) -> Iterator[Any]:
    """The database for one command; commands that change it hold the run lock (``lock``) for the whole run.
    Read-only commands take no lock and never write."""
    from curation.jobs.common import open_store, run_lock

    with open_store(settings) as store:
        if lock:
            with run_lock(store):
                yield store
        else:
            yield store


@contextmanager
def _recorded(settings: Any, command: str) -> Iterator[Any]:
    """The run's metrics go to ``metrics.textfile`` (``--metrics-file``) when it ends, if one is configured."""
    from curation.jobs.metrics import recorded

    with recorded(settings, command) as record:
        yield record


_printed_json: list[bool] = []  # set once this command has written its one JSON document


def _print_json(data: Any) -> None:
    # json.dumps escapes every control character; known secrets and URL credentials are masked.
    sys.stdout.write(redact(json.dumps(data, indent=2, default=str)) + "\n")
    sys.stdout.flush()
    _printed_json.append(True)


def _print_json_error(message: str, code: int) -> None:
    """Under ``--json`` an error is a document too, unless the command already printed its own (``loop`` reports a
    training failure inside its summary, then exits 10): stdout always holds exactly one document."""
    if not _printed_json:
        _print_json({"error": message, "exit_code": code})


def _emit(summary: dict[str, Any], json_out: bool, show: Callable[[dict[str, Any]], None]) -> None:
    """Print a job's summary: the JSON document under ``--json``, else the human form."""
    if json_out:
        _print_json(summary)
    else:
        show(summary)


def _progress() -> RichProgress | PlainProgress:
    """A progress bar on a terminal; plain periodic lines otherwise (cron logs)."""
    if err_console.is_terminal:
        return RichProgress(err_console, enabled=True)
    return PlainProgress(err_console)


def _print_scoring(summary: dict[str, Any]) -> None:
    ran = f"{summary['device']}, {summary['runtime']}" if summary["device"] else "model not loaded: nothing to score"
    line = (
        f"Scored {summary['scored']} new item(s) with [bold]{escape(summary['model_version'])}[/bold] "
        f"({escape(summary['task'])}, {escape(ran)})"
    )
    if summary["scored"] or summary["failed"]:
        line += f" at {summary['images_per_s']:.1f} img/s"
    line += f"; {summary['already_scored']} already scored"
    if summary["failed"]:
        line += f"; [yellow]{summary['failed']} unreadable[/yellow]"
    if summary["invalid"]:
        line += f"; [yellow]{summary['invalid']} invalid output[/yellow]"
    if summary["retry_later"]:
        line += f"; [yellow]{summary['retry_later']} unreadable for now (retried next run)[/yellow]"
    if summary["duplicate_paths"]:
        line += f"; {summary['duplicate_paths']} exact-duplicate path(s)"
    err_console.print(line, highlight=False, markup=True)
    embedding = summary.get("embedding")
    if embedding is not None:
        ran = embedding["device"] or "encoder not loaded: nothing missing"
        more = f"; [yellow]{embedding['failed']} unreadable[/yellow]" if embedding["failed"] else ""
        if embedding["invalid"]:
            more += f"; [yellow]{embedding['invalid']} non-finite (left out)[/yellow]"
        if embedding["retry_later"]:
            more += f"; [yellow]{embedding['retry_later']} unreadable for now (retried next run)[/yellow]"
        err_console.print(
            f"Embedded {embedding['embedded']} item(s) with [bold]{escape(embedding['model_version'])}[/bold] "
            f"(embedding.model, {escape(ran)}){more}",
            highlight=False,
            markup=True,
        )


def _common(
    db: str | None,
    pool: str | None = None,
    model: str | None = None,
    model_version: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    runtime: str | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
) -> Overrides:
    return {
        ("scoring", "engine"): (engine, "--engine"),
        ("scoring", "ray", "address"): (ray_address, "--ray-address"),
        ("db",): (db, "--db"),
        ("pool", "path"): (pool, "--pool"),
        ("model", "path"): (model, "--model"),
        ("model", "version"): (model_version, "--model-version"),
        ("scoring", "device"): (device, "--device"),
        ("scoring", "batch_size"): (batch_size, "--batch-size"),
        ("scoring", "workers"): (workers, "--workers"),
        ("scoring", "runtime"): (runtime, "--runtime"),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Commands


@app.command()
def score(
    pool: PoolOpt = None,
    model: ModelOpt = None,
    model_version: ModelVersionOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    rescore: RescoreOpt = False,
    metrics_file: MetricsFileOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Scan the pool and score every image the current model has not scored yet."""
    with _handled(debug, json_out):
        overrides = _common(db, pool, model, model_version, device, batch_size, workers, runtime, engine, ray_address)
        overrides[("metrics", "textfile")] = (str(metrics_file) if metrics_file else None, "--metrics-file")
        settings = _settings(config, overrides)
        with _recorded(settings, "score") as record, _store(settings, lock=True) as store:
            from curation.jobs import score as job  # once the lock is held: a refused run never loads torch

            outcome = job.score(store, settings, rescore=rescore, progress=_progress())
            record.scoring = outcome.summary()
        _emit(outcome.summary(), json_out, _print_scoring)


@app.command()
def select(
    budget: Annotated[int | None, typer.Option("--budget", "-n", help="How many items to select.")] = None,
    strategy: StrategyOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the selection to FILE.jsonl or .csv.")] = None,
    push: Annotated[
        bool | None,
        typer.Option(
            "--push/--no-push",
            help="Push to Label Studio (default: when a Label Studio URL is configured or --project is given).",
            show_default=False,
        ),
    ] = None,
    project: ProjectOpt = None,
    balance: BalanceOpt = None,
    min_distance: MinDistanceOpt = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for random choices.")] = None,
    pool: PoolOpt = None,
    model: ModelOpt = None,
    model_version: ModelVersionOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    rescore: RescoreOpt = False,
    metrics_file: MetricsFileOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Score what is unscored, then select the BUDGET items most worth labeling next."""
    with _handled(debug, json_out):
        from curation.jobs.common import wants_push

        overrides = _common(db, pool, model, model_version, device, batch_size, workers, runtime, engine, ray_address)
        overrides[("select", "budget")] = (budget, "--budget")
        overrides[("select", "out")] = (str(out) if out else None, "--out")
        overrides.update(_ranking_overrides(strategy, balance, min_distance, project))
        overrides[("strategy", "seed")] = (seed, "--seed")
        overrides[("metrics", "textfile")] = (str(metrics_file) if metrics_file else None, "--metrics-file")
        settings = _settings(config, overrides)
        out_path = Path(settings.select.out) if settings.select.out else None
        do_push = wants_push(settings, push, project_named=project is not None)
        with _recorded(settings, "select") as record, _store(settings, lock=True) as store:
            from curation.jobs import select as job  # once the lock is held: a refused run never loads torch

            outcome = job.select(
                store,
                settings,
                budget=settings.select.budget,
                out=out_path,
                rescore=rescore,
                push=do_push,
                progress=_progress(),
            )
            record.scoring = outcome.summary().get("scoring")
        _report_selection(outcome, json_out)
        if not do_push and push is None and not json_out:
            err_console.print(
                "Not pushed: no Label Studio URL configured (set LABEL_STUDIO_URL or label_studio.url, then run "
                "`curate push --selection ID`).",
                highlight=False,
            )


def _report_selection(outcome: Any, json_out: bool) -> None:
    summary = outcome.summary()
    if json_out:
        _print_json(summary)
        return
    _print_scoring(summary["scoring"])
    for warning in summary["warnings"]:
        err_console.print(f"[yellow]warning:[/yellow] {escape(safe(warning))}", highlight=False, markup=True)
    table = Table(
        title=f"Selection #{summary['selection_id']}: {summary['strategy']}, "
        f"{summary['selected']} of {summary['available']} candidates"
    )
    for col in ("rank", "score", "item", "path"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    shown = outcome.rows[:25]
    for row in shown:
        table.add_row(str(row["rank"]), f"{row['score']:.4f}", row["item_id"][:12], row["path"])
    if len(outcome.rows) > len(shown):
        table.caption = f"… {len(outcome.rows) - len(shown)} more" + (
            f" in {summary['out']}" if summary["out"] else " (use --out FILE to save all)"
        )
    out_console.print(table)
    if summary["out"]:
        err_console.print(f"Wrote {summary['selected']} rows to {summary['out']}")
    if "push" in summary:
        _print_push(summary["push"])
    if "ranking" in summary:
        ranking = summary["ranking"]
        err_console.print(
            f"Label Studio: ranked the {ranking['queue_size']} queued task(s) of project "
            f"[bold]{escape(ranking['project'])}[/bold] (#{ranking['project_id']}) under model_version "
            f"{escape(str(ranking['model_version_tag']))}; no task created",
            highlight=False,
            markup=True,
        )


def _print_push(push: dict[str, Any]) -> None:
    line = (
        f"Label Studio: pushed {push['pushed']} task(s) to project [bold]{escape(push['project'])}[/bold] "
        f"(#{push['project_id']}{', created' if push['created_project'] else ''}); queue {push['queue_size']} "
        f"task(s), served by lowest score under model_version {escape(push['model_version_tag'])}"
    )
    err_console.print(line, highlight=False, markup=True)
    if push["reconciled"]:
        err_console.print(f"  reconciled {push['reconciled']} task(s) already in Label Studio (no duplicates made)")
    if push["missing_files"]:
        err_console.print(f"  {len(push['missing_files'])} selected item(s) not pushed (see the warnings above)")
    err_console.print(f"  {push['project_url']}", highlight=False)


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo pool, model and database go.")] = Path(
        "demo"
    ),
    budget: Annotated[int, typer.Option("--budget", "-n", help="How many items to select.")] = 20,
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the demo directory first.")] = False,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep Label Studio running until Ctrl-C (default).")
    ] = True,
    push: Annotated[bool, typer.Option("--push/--no-push", help="Start Label Studio and push the queue.")] = True,
    port: Annotated[
        int | None, typer.Option("--port", help="Label Studio port (default 8080, else a free one).")
    ] = None,
    s3: Annotated[
        bool,
        typer.Option(
            "--s3", help="Serve the pool from a local SeaweedFS bucket (S3) and connect Label Studio's S3 storage."
        ),
    ] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Offline demo: generate a pool with broken files, train a tiny model, start a local Label Studio and push
    the selection into it as a prioritized queue."""
    with _handled(debug, json_out):
        from curation.devtools.demo import DEMO_PROJECT, prepare_demo, start_demo_label_studio
        from curation.jobs import select as job

        progress = _progress()
        assets = prepare_demo(directory, fresh=fresh, progress=progress)
        overrides = _common(db or assets.db_url, str(assets.pool), str(assets.model))
        overrides[("select", "out")] = (str(assets.root / "selection.jsonl"), "--out")
        server = login = objects = None
        if s3:
            from curation.devtools.demo import start_demo_seaweedfs
            from curation.devtools.local_seaweedfs import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY

            err_console.print("Starting a local SeaweedFS (S3) with the demo pool (installed on first use)…")
            objects, pool_uri = start_demo_seaweedfs(assets.root, assets.pool)
            overrides[("pool", "path")] = (pool_uri, "--s3")
            overrides[("pool", "s3", "endpoint_url")] = (objects.endpoint, "--s3")
            overrides[("pool", "s3", "access_key_id")] = (LOCAL_ACCESS_KEY, "--s3")
            overrides[("pool", "s3", "secret_access_key")] = (LOCAL_SECRET_KEY, "--s3")
            overrides[("label_studio", "project")] = (f"{DEMO_PROJECT} (S3)", "demo")
        if push:
            err_console.print("Starting a local Label Studio (the first run installs it into its own virtualenv)…")
            server, login = start_demo_label_studio(assets.root, port)
            overrides[("label_studio", "url")] = (server.url, "demo")
            overrides[("label_studio", "api_key")] = (login.api_key, "demo")
            overrides.setdefault(("label_studio", "project"), (DEMO_PROJECT, "demo"))
            overrides[("label_studio", "document_root")] = (str(assets.root), "demo")
        try:
            settings = _settings(config, overrides)
            with _store(settings, lock=True) as store:
                outcome = job.select(
                    store, settings, budget=budget, out=Path(settings.select.out), push=push, progress=progress
                )
            _report_selection(outcome, json_out)
            if json_out:
                return
            err_console.print()
            err_console.print(f"Demo files are in {assets.root}. Try: curate status --db {settings.db}")
            if server is not None and login is not None:
                push_info = outcome.summary()["push"]
                err_console.print()
                err_console.print(
                    f"[bold]Label Studio[/bold] {escape(push_info['project_url'])}", highlight=False, markup=True
                )
                err_console.print(f"  login: {login.username}  password: {login.password}", highlight=False)
                err_console.print('  Click "Label All Tasks": tasks come in curate\'s order.', highlight=False)
                if serve:
                    err_console.print("Press Ctrl-C to stop Label Studio.")

                    try:
                        while server.is_running():
                            time.sleep(1)
                    except KeyboardInterrupt:  # the documented way to end the demo: not an interruption
                        pass
                    err_console.print(f"Label Studio stopped; the demo stays in {assets.root}.", highlight=False)
        finally:
            if server is not None:
                server.stop()
            if objects is not None:
                objects.stop()


@app.command()
def status(
    pool: PoolOpt = None,
    model_version: ReportedVersionOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show pool size, scored/failed/selected/labeled counts, model versions, scores and recent runs."""
    with _handled(debug, json_out):
        from curation.jobs import status as job

        settings = _settings(config, _common(db, pool, None, model_version))
        with _store(settings, lock=False) as store:
            report = job.status(store, settings)
        _emit(report, json_out, _print_status)


def _print_status(report: dict[str, Any]) -> None:
    counts = report["counts"]
    table = Table(title=f"curate status — {report['pool'] or 'all pools'} ({report['database']})")
    table.add_column("")
    table.add_column("items", justify="right")
    rows = [
        ("pool items (distinct images)", counts["items"]),
        ("exact-duplicate paths", counts["duplicate_paths"]),
        (f"scored by {report['current_model_version'] or '—'}", counts["scored"]),
        ("unscored", counts["unscored"]),
        ("unreadable (failed)", counts["failed"]),
        ("invalid model output", counts["invalid"]),
        ("selected", counts["selected"]),
    ]
    for key in ("queued", "labeled", "skipped"):
        if key in counts:
            rows.append((key, counts[key]))
    for label, value in rows:
        table.add_row(label, str(value))
    out_console.print(table)

    if report["model_versions"]:
        mv = Table(title="Model versions")
        for col in ("version", "task", "classes", "predictions", "created"):
            mv.add_column(col)
        for v in report["model_versions"]:
            mv.add_row(v["version"], v["task"], str(v["classes"]), str(v["predictions"]), v["created_at"][:19])
        out_console.print(mv)

    dist = report["score_distribution"]
    if dist:
        q = dist["quantiles"]
        out_console.print(
            f"Uncertainty ({dist['measure']}) over {dist['candidates']} candidates: "
            + ", ".join(f"{k} {v:.3f}" for k, v in q.items())
        )
        counts_h = dist["histogram"]["counts"]
        peak = max(counts_h) or 1
        edges = dist["histogram"]["edges"]
        for i, c in enumerate(counts_h):
            out_console.print(f"  {edges[i]:.2f}–{edges[i + 1]:.2f} {'█' * round(30 * c / peak):<30} {c}")

    if report["recent_runs"]:
        runs = Table(title="Recent scoring runs")
        for col in ("id", "model version", "status", "scored", "failed", "invalid", "img/s", "started"):
            runs.add_column(col)
        for r in report["recent_runs"]:
            rate = f"{r['images_per_s']:.1f}" if r["images_per_s"] else "—"
            runs.add_row(
                str(r["id"]),
                r["model_version"],
                r["status"],
                str(r["scored"]),
                str(r["failed"]),
                str(r["invalid"]),
                rate,
                (r["started_at"] or "")[:19],
            )
        out_console.print(runs)
    if report["recent_selections"]:
        sels = Table(title="Recent selections")
        for col in ("id", "strategy", "selected", "budget", "model version", "created"):
            sels.add_column(col)
        for s in report["recent_selections"]:
            sels.add_row(
                str(s["id"]),
                s["strategy"],
                str(s["selected"]),
                str(s["budget"]),
                s["model_version"],
                (s["created_at"] or "")[:19],
            )
        out_console.print(sels)
    if report["failures"]:
        out_console.print(f"Unreadable files (first {len(report['failures'])}):")
        for f in report["failures"]:
            out_console.print(f"  {f['path']}: {f['reason']}", highlight=False)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write (self-contained).")] = Path(
        "report.html"
    ),
    png: Annotated[Path | None, typer.Option("--png", help="Also write each figure as DIR/<name>.png.")] = None,
    simulation: Annotated[
        Path | None, typer.Option("--simulation", help="Add the learning curves of a curate simulate result (JSON).")
    ] = None,
    pool: PoolOpt = None,
    model_version: ReportedVersionOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write one self-contained HTML report: pool and queue health, uncertainty, an embedding map, class balance,
    the model versions and simulated learning curves."""
    with _handled(debug, json_out):
        from curation.jobs import report as job

        settings = _settings(config, _common(db, pool, None, model_version))
        with _store(settings, lock=False) as store:
            outcome = job.report(store, settings, out=out, png_dir=png, simulation=simulation)
        _emit(outcome.summary(), json_out, _print_report)


def _print_report(summary: dict[str, Any]) -> None:
    if summary["empty"]:
        err_console.print("The database is empty (nothing scanned or scored yet); the report says so.")
    figures = summary["figures"]
    err_console.print(
        f"Wrote {summary['out']} ({summary['size_kib']:.0f} KiB, {len(figures)} figure(s)"
        + (f": {', '.join(figures)})" if figures else ")"),
        highlight=False,
    )
    for path in summary["png"]:
        err_console.print(f"  {path}", highlight=False)
    for note in summary["notes"]:
        err_console.print(f"  note: {note}", highlight=False)


def _ranking_overrides(
    strategy: str | None, balance: bool | None, min_distance: float | None, project: str | None
) -> Overrides:
    """The options that decide a queue's order (select and reprioritize)."""
    return {
        ("strategy", "name"): (strategy, "--strategy"),
        ("strategy", "balance"): (balance, "--balance"),
        ("strategy", "min_distance"): (min_distance, "--min-distance"),
        ("label_studio", "project"): (project, "--project"),
    }


def _ls_overrides(db: str | None, project: str | None) -> Overrides:
    overrides = _common(db)
    overrides[("label_studio", "project")] = (project, "--project")
    return overrides


@app.command()
def push(
    selection: Annotated[
        int | None, typer.Option("--selection", help="Push this selection (default: every selection not yet pushed).")
    ] = None,
    project: ProjectOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Push selected items that are not in the Label Studio project yet, as prioritized tasks with predictions."""
    with _handled(debug, json_out):
        settings = _settings(config, _ls_overrides(db, project))
        with _store(settings, lock=True) as store:
            from curation.jobs import queue as job  # once the lock is held: a refused run never loads torch

            report = job.push(store, settings, selection_id=selection, progress=_progress())
        _emit(report.summary(), json_out, _print_push)


@app.command()
def reprioritize(
    strategy: StrategyOpt = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Top the queue up so that N unlabeled tasks wait.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rewrite the ranking even if nothing changed.")] = False,
    balance: BalanceOpt = None,
    min_distance: MinDistanceOpt = None,
    project: ProjectOpt = None,
    pool: PoolOpt = None,
    model: ModelOpt = None,
    model_version: ModelVersionOpt = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    metrics_file: MetricsFileOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Re-rank the queued, unlabeled tasks with the current model and make Label Studio serve the new order."""
    with _handled(debug, json_out):
        overrides = _common(db, pool, model, model_version, device, batch_size, workers, runtime, engine, ray_address)
        overrides.update(_ranking_overrides(strategy, balance, min_distance, project))
        overrides[("metrics", "textfile")] = (str(metrics_file) if metrics_file else None, "--metrics-file")
        settings = _settings(config, overrides)
        with _recorded(settings, "reprioritize") as record, _store(settings, lock=True) as store:
            from curation.jobs import queue as job  # once the lock is held: a refused run never loads torch

            scored, report = job.reprioritize(store, settings, queue_size=queue_size, force=force, progress=_progress())
            record.scoring = scored.summary()
        summary = {**report.summary(), "scoring": scored.summary()}
        if report.push is not None:
            summary["push"] = report.push.summary()
        if json_out:
            _print_json(summary)
            return
        _print_scoring(summary["scoring"])
        if report.push is not None and report.push.pushed:
            _print_push(summary["push"])
        if report.model_note:
            err_console.print(f"Warning: {report.model_note}", highlight=False, markup=False)
        if not report.changed:
            err_console.print(f"Queue of {report.queue_size} task(s) unchanged: {report.reason}.")
            return
        err_console.print(
            f"Re-ranked {report.queue_size} queued task(s) with {report.strategy}: {report.moved} moved; "
            f"Label Studio now serves by model_version {report.model_version_tag} "
            f"(new order live after {report.served_after_s:.1f} s of {report.seconds:.1f} s)"
        )
        table = Table(title="Next in the queue")
        for col in ("position", "was", "task", "item"):
            table.add_column(col)
        for row in report.top:
            table.add_row(str(row["position"]), str(row["was"] or "new"), str(row["task_id"]), row["item_id"][:12])
        out_console.print(table)


@app.command()
def pull(
    project: ProjectOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fetch finished annotations (and skips) from Label Studio; labeled items are never selected again."""
    with _handled(debug, json_out):
        settings = _settings(config, _ls_overrides(db, project))
        with _store(settings, lock=True) as store:
            from curation.jobs import pull as job  # once the lock is held: a refused run never loads torch

            report = job.pull(store, settings, progress=_progress())
        _emit(report.summary(), json_out, _print_pull)


def _unchanged_note(pulled: dict[str, Any]) -> str:
    n = pulled.get("unchanged_predictions") or 0
    return f"; {n} label(s) accepted the model's guess unchanged" if n else ""


def _print_pull(summary: dict[str, Any]) -> None:
    err_console.print(
        f"Pulled {summary['new_annotations']} new annotation(s) from {summary['tasks_seen']} updated task(s) of "
        f"[bold]{escape(summary['project'])}[/bold]: {summary['labeled_tasks']} labeled, "
        f"{summary['skipped_tasks']} skipped"
        + (f", {summary['foreign_tasks']} not from curate" if summary["foreign_tasks"] else "")
        + _unchanged_note(summary),
        highlight=False,
        markup=True,
    )


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (new, empty, or an earlier export).")],
    link: Annotated[str, typer.Option("--link", help="copy (default), symlink or hardlink the pool files.")] = "copy",
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="Export exactly what trained this version.")
    ] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Write the labeled set as an Ultralytics dataset with a manifest (path, SHA-256, split, label source)."""
    with _handled(debug, json_out):
        settings = _settings(config, _common(db, None, None))
        with _store(settings, lock=True) as store:
            from curation.jobs.export import export as job

            report = job(store, settings, out, link=link, model_version=model_version)
        _emit(report.summary(), json_out, _print_export)


def _print_export(e: dict[str, Any]) -> None:
    skipped = ", ".join(f"{n} {escape(label)}" for label, n in sorted(e["skipped_labels"].items()))
    err_console.print(
        f"Exported {e['n_train']} train and {e['n_val']} val items ({escape(e['task'])}, classes of "
        f"{escape(e['model_version'])}) to [bold]{escape(e['out'])}[/bold]; manifest {escape(e['manifest'])}; "
        f"dataset hash {e['dataset_hash'][:12]}" + (f". Skipped labels: {skipped}" if skipped else ""),
        highlight=False,
        markup=True,
    )


labels_app = typer.Typer(help="Labels made outside curate.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")


@labels_app.command("import")
def labels_import(
    path: Annotated[Path, typer.Argument(help="YOLO dataset folder, its data.yaml, or a Label Studio .json export.")],
    images: Annotated[
        Path | None, typer.Option("--images", help="Where a Label Studio export's images are (matched by path/name).")
    ] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Store labels from a YOLO dataset or a Label Studio export as labeled items (matched by content id)."""
    with _handled(debug, json_out):
        settings = _settings(config, _common(db, None, None))
        with _store(settings, lock=True) as store:
            from curation.jobs.labels import import_labels

            report = import_labels(store, settings, path, images=images)
        _emit(report.summary(), json_out, _print_label_import)


def _print_label_import(r: dict[str, Any]) -> None:
    unknown = ", ".join(f"{escape(name)} ({n})" for name, n in r["unknown_classes"].items())
    err_console.print(
        f"Imported {r['imported']} label(s) from {escape(r['source'])} ({r['kind']}): {r['matched']} matched, "
        f"{r['new']} new image(s) registered, {r['unmatched']} unmatched, {r['already_labeled']} already labeled"
        + (f"; classes the model does not know: {unknown}" if unknown else ""),
        highlight=False,
        markup=True,
    )


testset_app = typer.Typer(
    help="The test set: pool items drawn at random, labeled in Label Studio, used only to evaluate.",
    no_args_is_help=True,
)
app.add_typer(testset_app, name="testset")


@testset_app.command("draw")
def testset_draw(
    size: Annotated[
        str | None,
        typer.Option("--size", "-n", help="Grow the test set to N items, or auto (default: train.test_set_size)."),
    ] = None,
    push: Annotated[
        bool, typer.Option("--push/--no-push", help="Queue the drawn items in Label Studio (default: yes).")
    ] = True,
    project: ProjectOpt = None,
    pool: PoolOpt = None,
    model: ModelOpt = None,
    model_version: ModelVersionOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw the test set uniformly at random from the pool (seeded; never twice) and queue it as test tasks."""
    with _handled(debug, json_out):
        overrides = _common(db, pool, model, model_version)
        overrides[("label_studio", "project")] = (project, "--project")
        settings = _settings(config, overrides)
        with _store(settings, lock=True) as store:
            from curation.jobs import testset as job  # once the lock is held: a refused run never loads torch

            report = job.draw(store, settings, size=size, push=push, progress=_progress())
        _emit(report.summary(), json_out, _print_testset)


@testset_app.command("status")
def testset_status(
    db: DbOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False
) -> None:
    """Show the test set's size, its target size, and how much of it is labeled or queued."""
    with _handled(debug, json_out):
        settings = _settings(config, _common(db, None, None))
        with _store(settings, lock=False) as store:
            from curation.jobs import testset as job

            report = job.status(store, settings)
        _emit(report.summary(), json_out, _print_testset)


def _print_testset(r: dict[str, Any]) -> None:
    target = "no target size" if r["target"] is None else f"target {r['target']}"
    drawn = f"drew {r['drawn']} item(s); " if r.get("drawn") else ""
    err_console.print(
        f"Test set: {drawn}{r['size']} item(s) ({target}, seed {r['seed']}): {r['labeled']} labeled, "
        f"{r['queued']} queued in Label Studio",
        highlight=False,
    )
    for warning in r.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {escape(safe(warning))}", highlight=False, markup=True)
    if r.get("push"):
        _print_push(r["push"])
    if r.get("marked"):
        reason = (r.get("queue") or {}).get("reason", "")
        err_console.print(
            f"Label Studio: marked {r['marked']} existing task(s) as test tasks (none created); "
            f"queue: {escape(reason)}",
            highlight=False,
        )


ls_app = typer.Typer(help="Label Studio project set-up.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")


@ls_app.command("init")
def ls_init(
    project: ProjectOpt = None,
    model: ModelOpt = None,
    model_version: ModelVersionOpt = None,
    pool: PoolOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Create the Label Studio project from the model's task and classes, or check an existing one's labels."""
    with _handled(debug, json_out):
        overrides = _common(db, pool, model, model_version)
        overrides[("label_studio", "project")] = (project, "--project")
        settings = _settings(config, overrides)
        with _store(settings, lock=True) as store:
            from curation.jobs import queue as job  # once the lock is held: a refused run never loads torch

            info = job.ls_init(store, settings)
        if json_out:
            _print_json(info)
            return
        verb = "Created" if info["created"] else "Checked"
        err_console.print(
            f"{verb} project [bold]{escape(info['project'])}[/bold] (#{info['project_id']}) on "
            f"{escape(info['server'])} as {escape(str(info['user']))}: {info['task']} with {len(info['labels'])} "
            f"labels matching {escape(info['model_version'])}",
            highlight=False,
            markup=True,
        )
        if info["local_storage"]:
            err_console.print(f"  local files served from {info['local_storage']}", highlight=False)
        err_console.print(f"  {info['project_url']}", highlight=False)


@ls_app.command("connect")
def ls_connect(
    url: Annotated[
        str | None, typer.Option("--url", help="Where Label Studio reaches curate serve (serve.public_url).")
    ] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Unregister the ML backend and the webhook.")] = False,
    project: ProjectOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Register curate serve in the project as its ML backend and webhook (idempotent; --remove undoes it)."""
    with _handled(debug, json_out):
        from curation.jobs import connect as job

        settings = _settings(config, _ls_overrides(db, project))
        info = job.ls_connect(settings, url=url, remove=remove)
        if json_out:
            _print_json(info)
            return
        where = f"project [bold]{escape(str(info['project']))}[/bold] (#{info['project_id']}) on {info['server']}"
        if info["removed"]:
            err_console.print(
                f"Removed {info['backends_removed']} ML backend(s) and {info['webhooks_removed']} webhook(s) for "
                f"{escape(info['url'])} from {where}",
                highlight=False,
                markup=True,
            )
            return
        backend = "registered" if info["backend_created"] else "already registered"
        hook = "added" if info["webhook_created"] else "updated" if info["webhook_updated"] else "unchanged"
        err_console.print(
            f"ML backend {escape(info['url'])} {backend} in {where}; webhook {hook} "
            f"({'with' if info['webhook_secret'] else 'without'} a shared secret)",
            highlight=False,
            markup=True,
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Bind address (serve.host, default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (serve.port, default 9090).")] = None,
    project: ProjectOpt = None,
    pool: PoolOpt = None,
    metrics_file: MetricsFileOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve Label Studio as its ML backend (predictions, webhooks that drive the loop) and Prometheus metrics."""
    with _handled(debug, json_out):
        overrides = _common(db, pool)
        overrides[("label_studio", "project")] = (project, "--project")
        overrides[("serve", "host")] = (host, "--host")
        overrides[("serve", "port")] = (port, "--port")
        overrides[("metrics", "textfile")] = (str(metrics_file) if metrics_file else None, "--metrics-file")
        settings = _settings(config, overrides)
        from curation.serve import run
        from store.db import redacted

        err_console.print(
            f"curate serve on http://{settings.serve.host}:{settings.serve.port} (database {redacted(settings.db)}); "
            "Ctrl-C stops it",
            highlight=False,
        )
        run(settings)


TrainOpts = Annotated[int | None, typer.Option("--epochs", help="Training epochs (train.epochs).")]


def _train_overrides(epochs: int | None, imgsz: int | None, batch_size: int | None) -> Overrides:
    return {
        ("train", "epochs"): (epochs, "--epochs"),
        ("train", "imgsz"): (imgsz, "--imgsz"),
        ("train", "batch_size"): (batch_size, "--batch-size"),
    }


@app.command()
def train(
    epochs: TrainOpts = None,
    imgsz: Annotated[int | None, typer.Option("--imgsz", help="Training input size (train.imgsz).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Training batch size.")] = None,
    model: ModelOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fine-tune the current model on the labeled items; register it, promoted only if it beats the current one."""
    with _handled(debug, json_out):
        overrides = _common(db, None, model)
        overrides.update(_train_overrides(epochs, imgsz, batch_size))
        settings = _settings(config, overrides)
        with _store(settings, lock=True) as store:
            from curation.jobs import train as job  # once the lock is held: a refused run never loads torch

            report = job.train(store, settings, progress=_progress())
        _emit(report.summary(), json_out, _print_training)


def _print_training(t: dict[str, Any]) -> None:
    if not t["trained"]:
        err_console.print(f"Not trained: {t['reason']}", highlight=False)
        return
    metric = t["metric"]
    err_console.print(
        f"Trained [bold]{escape(t['version'])}[/bold] from {escape(str(t['parent']))} on {t['n_train']} items "
        f"({t['n_val']} held out): {metric} {t['candidate_metrics'][metric]:.4f} vs current "
        f"{t['current_metrics'][metric]:.4f}. {escape(t['reason'][0].upper() + t['reason'][1:])}.",
        highlight=False,
        markup=True,
    )
    extra = []
    if t.get("base_items"):
        extra.append(f"{t['base_items']} base images replayed")
    if t.get("eval_source") and t["eval_source"] != "held-out split":
        extra.append(f"evaluated on {t['n_eval']} items of {t['eval_source']}")
    if t.get("new_classes"):
        extra.append("new classes: " + ", ".join(t["new_classes"]))
    if extra:
        err_console.print(escape("; ".join(extra)), highlight=False)
    for warning in t.get("warnings", []):
        err_console.print(f"[yellow]warning:[/yellow] {escape(safe(warning))}", highlight=False, markup=True)


models_app = typer.Typer(
    help="The model registry: trained versions, their metrics, and the current model.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(db: DbOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False) -> None:
    """Every model version: status, metric on the held-out split, parent, labels used."""
    with _handled(debug, json_out):
        from curation.jobs import registry as job

        settings = _settings(config, _common(db))
        with _store(settings, lock=False) as store:
            data = job.models(store)
        if json_out:
            _print_json(data)
            return
        table = Table(title=f"Model versions (current: {data['current'] or '—'})")
        for col in ("version", "status", "task", "metric", "labels", "parent", "trained"):
            table.add_column(col)
        for v in data["versions"]:
            metric = f"{v['metric']} {v['value']:.4f}" if v["metric"] and v["value"] is not None else "—"
            table.add_row(
                v["version"],
                v["status"],
                v["task"],
                metric,
                str(v["n_labeled"] or "—"),
                v["parent"] or "—",
                (v["trained_at"] or "")[:19] or "—",
            )
        out_console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str | None, typer.Argument(help="Model version (default: the current one).")] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """One model version in detail: weights, metrics, parent, dataset hash, classes."""
    with _handled(debug, json_out):
        from curation.jobs import registry as job

        settings = _settings(config, _common(db))
        with _store(settings, lock=False) as store:
            data = job.model_detail(store, version)
        _emit(data, json_out, _print_fields)


def _print_fields(data: dict[str, Any]) -> None:
    for key, value in data.items():
        out_console.print(f"[bold]{key}[/bold]: {escape(str(value))}", highlight=False, markup=True)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The model version to make current.")],
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Make VERSION the current model (used by score, select, reprioritize and loop from now on)."""
    with _handled(debug, json_out):
        settings = _settings(config, _common(db))
        with _store(settings, lock=True) as store:
            from curation.jobs import registry as job  # once the lock is held: a refused run never loads torch

            data = job.promote(store, version)
        _emit(data, json_out, _print_promoted)


def _print_promoted(data: dict[str, Any]) -> None:
    err_console.print(f"Current model: {data['current']} (was {data['previous'] or '—'})", highlight=False)


@models_app.command("current")
def models_current(
    db: DbOpt = None, config: ConfigOpt = None, json_out: JsonOpt = False, debug: DebugOpt = False
) -> None:
    """Print the current model version."""
    with _handled(debug, json_out):
        from curation.jobs import registry as job

        settings = _settings(config, _common(db))
        with _store(settings, lock=False) as store:
            data = job.model_detail(store, None)
        _emit(data, json_out, lambda d: out_console.print(d["version"], highlight=False))


@app.command()
def loop(
    min_new_labels: Annotated[
        int | None,
        typer.Option("--min-new-labels", help="Train only after this many new labels (train.min_new_labels)."),
    ] = None,
    queue_size: Annotated[
        int | None, typer.Option("--queue-size", help="Top the queue up so that N unlabeled tasks wait.")
    ] = None,
    strategy: StrategyOpt = None,
    epochs: TrainOpts = None,
    project: ProjectOpt = None,
    pool: PoolOpt = None,
    model: ModelOpt = None,
    metrics_file: MetricsFileOpt = None,
    runtime: RuntimeOpt = None,
    engine: EngineOpt = None,
    ray_address: RayAddressOpt = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """For cron: pull annotations, fine-tune when enough are new, promote if better, rescore, reprioritize."""
    with _handled(debug, json_out):
        overrides = _common(db, pool, model, runtime=runtime, engine=engine, ray_address=ray_address)
        overrides[("label_studio", "project")] = (project, "--project")
        overrides[("strategy", "name")] = (strategy, "--strategy")
        overrides.update(_train_overrides(epochs, None, None))
        overrides[("metrics", "textfile")] = (str(metrics_file) if metrics_file else None, "--metrics-file")
        settings = _settings(config, overrides)
        with _recorded(settings, "loop") as record, _store(settings, lock=True) as store:
            from curation.jobs import loop as job  # once the lock is held: a refused run never loads torch

            report = job.loop(
                store,
                settings,
                min_new_labels=min_new_labels,
                queue_size=queue_size,
                progress=_progress(),
            )
            record.scoring = report.scoring
            if report.training_error:
                record.error = "training"
        summary = report.summary()
        if json_out:
            _print_json(summary)
        else:
            _print_loop(summary)
        if report.training_error:  # the turn finished; cron must still see the failure (exit 10)
            from curation.training.trainer import TrainingError

            raise TrainingError(f"training failed: {report.training_error}")


def _print_loop(summary: dict[str, Any]) -> None:
    pulled = summary["pulled"]
    if pulled:
        err_console.print(
            f"pull: {pulled['new_annotations']} new annotation(s) ({pulled['labeled_tasks']} labeled, "
            f"{pulled['skipped_tasks']} skipped)" + _unchanged_note(pulled),
            highlight=False,
        )
    if summary["training"]:
        _print_training(summary["training"])
    for note in summary["notes"]:
        err_console.print(note, highlight=False)
    q = summary["queue"]
    err_console.print(
        f"model {summary['current_model']}: scored {summary['scoring']['scored']} new; queue of {q['queue_size']} "
        + (f"re-ranked ({q['moved']} moved)" if q["changed"] else f"unchanged ({q['reason']})")
        + (f", {q['topped_up']} added" if q["topped_up"] else "")
        + f" — {summary['seconds']:.1f} s",
        highlight=False,
    )


@app.command()
def simulate(
    dataset: Annotated[Path, typer.Option("--dataset", help="Labeled dataset: a folder per class, or a data.yaml.")],
    strategies: Annotated[
        str, typer.Option("--strategies", help="Comma-separated strategies (random is always included).")
    ] = "random,entropy,hybrid",
    initial: Annotated[int, typer.Option("--initial", help="Random labeled items to start from.")] = 50,
    step: Annotated[int, typer.Option("--step", help="Items selected per round.")] = 50,
    rounds: Annotated[int, typer.Option("--rounds", help="Selection rounds per strategy and seed.")] = 6,
    seeds: Annotated[int, typer.Option("--seeds", help="Repeats with different initial sets.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Base seed: test split and initial sets.")] = 0,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Held-out share, never selectable.")] = 0.2,
    trainer: Annotated[
        str, typer.Option("--trainer", help="linear (fast, on frozen embeddings) or finetune (Ultralytics).")
    ] = "linear",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per round for --trainer finetune.")] = 10,
    base_dataset: Annotated[
        Path | None,
        typer.Option("--base-dataset", help="finetune: the model's training set, replayed every round."),
    ] = None,
    replay_ratio: Annotated[
        float | None, typer.Option("--replay-ratio", help="Base images per labeled image per round (default: all).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON with every round of every seed.")] = Path(
        "simulation.json"
    ),
    png: Annotated[Path | None, typer.Option("--png", help="Learning-curve plot (default: beside --out).")] = None,
    model: ModelOpt = None,
    imgsz: Annotated[int | None, typer.Option("--imgsz", help="Model input size (model.imgsz).")] = None,
    device: DeviceOpt = None,
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    db: Annotated[
        str | None, typer.Option("--db", help="Keep the dataset's scores in this database (reused by reruns).")
    ] = None,
    save_recommendation: Annotated[
        bool,
        typer.Option(
            "--save-recommendation",
            help="Store the recommended strategy in the configured database (db) for `strategy: auto`.",
        ),
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Learning curves of strategies against random on a labeled dataset: do they save labels on your data?"""
    with _handled(debug, json_out):
        from curation.files import check_output_path
        from curation.simulate.simulation import (
            SimulationConfig,
            fmt_fraction,
            plot_curves,
            record_recommendation,
            simulate,
            write_json,
        )
        from store.db import redacted

        check_output_path(out, "--out", (".json",))  # before minutes of training, not after
        check_output_path(png or out.with_suffix(".png"), "--png", (".png", ".svg", ".pdf"))
        overrides = _common(db, None, None, None, device, batch_size, workers)
        overrides[("model", "imgsz")] = (imgsz, "--imgsz")
        settings = _settings(config, overrides)
        model_spec = model or settings.model.path or "yolov8n-cls.yaml"
        cfg = SimulationConfig(
            dataset=dataset,
            strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
            initial=initial,
            step=step,
            rounds=rounds,
            seeds=seeds,
            seed=seed,
            test_fraction=test_fraction,
            trainer=trainer,
            epochs=epochs,
            keep_db=db is not None,
            base_dataset=base_dataset,
            replay_ratio=replay_ratio,
        )
        result = simulate(cfg, settings, model_spec, progress=_progress())
        write_json(result, out)
        picture = plot_curves(result, png or out.with_suffix(".png"))
        recommended = record_recommendation(result, settings) if save_recommendation else result.recommendation()
        data = result.to_json() | {"out": str(out), "png": str(picture), "recommendation_saved": save_recommendation}
        if json_out:
            _print_json(data)
            return
        curves = result.curves()
        table = Table(
            title=f"test {result.metric} (mean ± std over {cfg.seeds} seeds), {cfg.trainer} trainer, "
            f"model {result.model}"
        )
        table.add_column("labels", justify="right")
        for name in curves:
            table.add_column(name, justify="right")
        for n in sorted(next(iter(curves.values()))):
            table.add_row(str(n), *(f"{curves[s][n][0]:.3f} ± {curves[s][n][1]:.3f}" for s in curves))
        out_console.print(table)
        head = result.headline()
        out_console.print(
            f"Labels needed to reach random's final {result.metric} ({head['random_final_metric']:.3f} with "
            f"{head['random_final_labels']} labels):"
        )
        for name, h in head["strategies"].items():
            if name == "random":
                continue
            needed = h["labels_to_reach_random_final"]
            below = h["rounds_below_random"]
            out_console.print(
                f"  {name:>18}: {f'{needed:.0f}' if needed is not None else '—':>6} labels = "
                f"{fmt_fraction(h['fraction_of_random_labels'])} of random's"
                + (f"; below random at {len(below)} round(s)" if below else "; never below random")
            )
        if recommended is not None:
            out_console.print(
                f"Recommended for this data: {recommended['strategy']} (mean "
                f"{recommended['mean_fraction_of_random_labels']:.0%} of random's labels over horizons 1-"
                f"{recommended['horizons']})"
                + (
                    f"; stored for `strategy: auto` in {redacted(settings.db)}"
                    if save_recommendation
                    else "; --save-recommendation stores it for `strategy: auto`"
                ),
                highlight=False,
                markup=False,
            )
        err_console.print(f"Wrote {out} and {picture}")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out_console.print(f"curate {version('curate')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print curate's version and exit."),
    ] = False,
) -> None:
    """Decide which images to label next, and keep Label Studio's queue in that order."""


def _terminate_like_ctrl_c() -> None:
    """SIGTERM (``systemctl stop``, ``docker stop``) ends a run the way Ctrl-C does, instead of killing it with its
    scoring run left ``running``. Installed by the entry point only: a library caller keeps its own handlers."""
    import signal

    from curation.errors import Terminated

    def _raise(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop must not cut the saving short
        raise Terminated()

    signal.signal(signal.SIGTERM, _raise)


def main() -> None:
    import gc

    # Why: a command imports several hundred modules, and at the default gen-0 threshold (700 allocations) the
    # cyclic collector runs hundreds of times during that start-up for almost no garbage (~0.1 s of an idle cron
    # turn); a higher threshold keeps it collecting, less often.
    gc.set_threshold(20_000, 20, 20)
    _terminate_like_ctrl_c()
    try:
        app()
    finally:
        # the process is about to end: its last collections would walk every object only to free what the OS
        # frees anyway (~0.25 s of an idle turn). Everything that needs closing was closed by its own `with`.
        gc.freeze()


if __name__ == "__main__":
    main()

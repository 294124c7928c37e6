"""Typed errors raised by the library; ``cli.py`` maps each to one line and an exit code.

Every error names the thing that is wrong (a file, a config key, a server) so that the message alone tells the
user what to fix. Messages never contain secrets: adapters pass redacted text only.
"""

from __future__ import annotations


class ExitCode:
    """Process exit codes, documented in the README ("Exit codes")."""

    OK = 0
    INTERNAL = 1  # a bug: unexpected exception (traceback with --debug)
    USAGE = 2  # bad command-line usage or bad configuration
    NOT_FOUND = 3  # pool, manifest or model file missing or unreadable
    DATABASE = 4  # database unreachable, locked or failing
    LABEL_STUDIO = 5  # Label Studio unreachable, timing out, or answering with an error
    AUTH = 6  # Label Studio refused the token
    NOTHING_TO_SELECT = 7  # the pool has no selectable item
    LOCKED = 8  # another curate run holds the lock on this database
    MODEL = 9  # the model cannot be loaded or produced unusable output
    TRAINING = 10  # fine-tuning or evaluation failed (curate loop still rescored and reprioritized)
    UNSAFE_MODEL = 11  # a model file was refused (code outside the allow-list) or registered weights changed
    OBJECT_STORE = 12  # the object store (S3) refused the credentials, has no such bucket, or is unreachable
    CLUSTER = 13  # the Ray cluster (scoring.engine: ray) cannot be reached or cannot run the job
    INTERRUPTED = 130  # Ctrl-C; work done so far is committed
    TERMINATED = 143  # SIGTERM (systemd stop, docker stop); handled like Ctrl-C: work done so far is committed


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM. A ``KeyboardInterrupt`` so that every place that saves work on
    Ctrl-C (flush the scores, mark the run interrupted, release the lock) does the same on a stop."""


class CurateError(Exception):
    """Base class of every error the CLI turns into a clean message."""

    exit_code: int = ExitCode.INTERNAL


class UnknownReferenceError(CurateError):
    """A selection id or model version named by the user is not in the database."""

    exit_code = ExitCode.USAGE


class ConfigError(CurateError):
    """A configuration value is invalid; the message names the key and where it came from."""

    exit_code = ExitCode.USAGE


class PoolError(CurateError):
    """The pool path or manifest is missing or unreadable."""

    exit_code = ExitCode.NOT_FOUND


class ObjectStoreError(CurateError):
    """An object store (S3 or S3-compatible) cannot be used at all: bad credentials, no such bucket, endpoint
    unreachable. Raised before any work; the message names the bucket and the endpoint, never a secret."""

    exit_code = ExitCode.OBJECT_STORE


class ModelLoadError(CurateError):
    """The model file is missing, unreadable, or not a model we can run."""

    exit_code = ExitCode.NOT_FOUND


class RuntimeUnavailableError(CurateError):
    """``scoring.runtime`` names an inference runtime that is not installed (or cannot run on the device)."""

    exit_code = ExitCode.USAGE


class EngineUnavailableError(CurateError):
    """``scoring.engine: ray`` without Ray installed (the ``curate[ray]`` extra)."""

    exit_code = ExitCode.USAGE


class ClusterError(CurateError):
    """The Ray cluster cannot be reached (the message names the address) or cannot run the scoring job (it has no
    resources for an actor, or the job failed there for a reason other than one item)."""

    exit_code = ExitCode.CLUSTER


class ModelExportError(CurateError):
    """The model could not be exported for the chosen runtime (``scoring.runtime: torch`` still runs it)."""

    exit_code = ExitCode.MODEL


class InputFileError(CurateError):
    """A file given on the command line to read from (``report --simulation``) is missing, unreadable or not what
    it should be."""

    exit_code = ExitCode.NOT_FOUND


class ExportError(CurateError):
    """A dataset export cannot be written: its folder holds something that is not a curate export, a link cannot
    be made, or an item's file is missing or changed since it was labeled."""

    exit_code = ExitCode.NOT_FOUND


class ModelOutputError(CurateError):
    """The model runs but its output cannot be used (wrong shape, unknown task)."""

    exit_code = ExitCode.MODEL


class UnservableImageError(CurateError):
    """One image cannot be given a URL Label Studio can load (outside the served folder): the item is skipped."""

    exit_code = ExitCode.USAGE


class NothingToSelectError(CurateError):
    """No item is selectable (empty pool, everything failed, selected or labeled)."""

    exit_code = ExitCode.NOTHING_TO_SELECT


class LabelStudioError(CurateError):
    """Label Studio is unreachable, timed out, or rejected a request (``status``: the HTTP status, if any)."""

    exit_code = ExitCode.LABEL_STUDIO

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ProjectNotFoundError(LabelStudioError):
    """The configured project does not exist on the server, or this database has never pushed to it."""


class LabelStudioAuthError(LabelStudioError):
    """Label Studio refused the API key."""

    exit_code = ExitCode.AUTH


class ProjectConfigMismatchError(LabelStudioError):
    """The Label Studio project's labeling config does not match the model's classes."""

    exit_code = ExitCode.USAGE


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an error raised anywhere below the CLI (or the server).

    ``CurateError`` subclasses carry their own code; errors of ``store`` and ``strategies`` (which never import
    ``curation``) are mapped by type here. The most specific class in the exception's MRO decides, so the answer
    never depends on the order of a chain of checks.
    """
    if isinstance(exc, CurateError):
        return exc.exit_code
    from store.errors import DatabaseError, DatabaseURLError, LockHeldError, RegistryConflictError
    from strategies.errors import EmptyPoolError, PoolExhaustedError, StrategyError

    codes: dict[type[BaseException], int] = {
        LockHeldError: ExitCode.LOCKED,
        DatabaseURLError: ExitCode.USAGE,
        RegistryConflictError: ExitCode.USAGE,
        DatabaseError: ExitCode.DATABASE,
        EmptyPoolError: ExitCode.NOTHING_TO_SELECT,
        PoolExhaustedError: ExitCode.NOTHING_TO_SELECT,
        StrategyError: ExitCode.USAGE,
    }
    for cls in type(exc).__mro__:
        if cls in codes:
            return codes[cls]
    return ExitCode.INTERNAL

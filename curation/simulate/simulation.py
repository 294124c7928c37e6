"""``curate simulate``: does a strategy save labels on *your* data? Learning curves against random, honestly.

On a fully labeled dataset: a fixed test split is held out (stratified, from ``--seed``) and never selectable; each
seed starts from its own random initial labeled set; each strategy then repeatedly selects ``step`` items — with
exactly the code ``curate select`` runs (``build_strategy`` → ``build_view`` → ``Strategy.select``) — their labels
are revealed, the model is retrained, and the metric is measured on the test split. Random is always included.

Trainers:

- ``linear`` (default, fast on a CPU): the model's embeddings are computed once (curate's batched scoring), then a
  softmax regression (L2-regularised, full-batch L-BFGS, deterministic) is refitted on the labeled embeddings every
  round; its probabilities drive the uncertainty measures. Classification only.
- ``finetune``: the full Ultralytics fine-tune from the model every round, then curate scores the pool with the new
  weights (probabilities or boxes, and embeddings). Classification and detection; meant for a GPU.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from curation.config import IMAGE_EXTENSIONS, ModelSettings, ScoringSettings, Settings, StrategySettings, TrainSettings
from curation.errors import ConfigError, PoolError
from curation.files import atomic_write_text
from curation.progress import NullProgress, Progress
from curation.selection import (
    FALLBACK_MEASURE,
    build_strategy,
    build_view,
    needs_embeddings,
    output_probs,
    scores_uncertainty,
)
from curation.training.dataset import (
    Box,
    box_row,
    class_folder,
    link,
    read_data_yaml,
    write_data_yaml,
    write_labels,
    yolo_image_path,
)
from store.records import ClassificationScores, DetectionScores

if TYPE_CHECKING:
    from curation.scoring.runtime import ItemOutput

TRAINERS = ("linear", "finetune")


@dataclass(frozen=True)
class SimulationConfig:
    dataset: Path
    strategies: tuple[str, ...]
    initial: int = 50
    step: int = 50
    rounds: int = 6
    seeds: int = 3
    seed: int = 0
    test_fraction: float = 0.2
    trainer: str = "linear"
    epochs: int = 10  # finetune trainer
    l2: float = 1e-3  # linear trainer
    keep_db: bool = False  # score into settings.db (reused by reruns) instead of a scratch database
    base_dataset: Path | None = None  # finetune trainer: the model's own training set, replayed every round
    replay_ratio: float | None = None  # base images per labeled image per round (None: all of them)


@dataclass
class Dataset:
    """The labeled images (the pool to simulate on), their class index, and the class names."""

    paths: list[Path]
    labels: NDArray[np.int64]
    class_names: list[str]
    task: str = "classify"
    detection_labels: list[list[Box]] = field(default_factory=list)
    root: Path | None = None

    def relative(self, index: int) -> str:
        path = self.paths[int(index)]
        return str(path.relative_to(self.root)) if self.root and path.is_relative_to(self.root) else str(path)


@dataclass
class SimulationResult:
    config: SimulationConfig
    model: str
    metric: str
    pool_size: int
    test_size: int
    records: list[dict[str, Any]]
    test_items: list[str] = field(default_factory=list)

    def curves(self) -> dict[str, dict[int, tuple[float, float]]]:
        """strategy → n_labeled → (mean, std) over seeds."""
        out: dict[str, dict[int, list[float]]] = {}
        for r in self.records:
            out.setdefault(r["strategy"], {}).setdefault(r["n_labeled"], []).append(r["metric"])
        return {
            s: {n: (float(np.mean(v)), float(np.std(v))) for n, v in sorted(points.items())}
            for s, points in out.items()
        }

    def headline(self) -> dict[str, Any]:
        """For each strategy, the labels it needed to reach random's final mean metric, as a fraction of random's
        labels (linear interpolation between rounds; None if never reached)."""
        curves = self.curves()
        random_curve = curves["random"]
        final_n = max(random_curve)
        target = random_curve[final_n][0]
        out: dict[str, Any] = {"random_final_metric": target, "random_final_labels": final_n, "strategies": {}}
        for name, curve in curves.items():
            needed = _labels_to_reach(curve, target)
            below = [n for n, (m, _) in curve.items() if m < random_curve.get(n, (m, 0))[0] - 1e-12]
            out["strategies"][name] = {
                "labels_to_reach_random_final": needed,
                "fraction_of_random_labels": None if needed is None else needed / final_n,
                "final_metric": curve[max(curve)][0],
                "rounds_below_random": below,
            }
        return out

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "dataset": str(c.dataset),
            "model": self.model,
            "trainer": c.trainer,
            "metric": self.metric,
            "strategies": list(c.strategies),
            "initial": c.initial,
            "step": c.step,
            "rounds": c.rounds,
            "seeds": c.seeds,
            "seed": c.seed,
            "test_fraction": c.test_fraction,
            "base_dataset": str(c.base_dataset) if c.base_dataset else None,
            "replay_ratio": c.replay_ratio,
            "pool_size": self.pool_size,
            "test_size": self.test_size,
            "test_items": self.test_items,
            "records": self.records,
            "curves": {
                s: {str(n): {"mean": m, "std": sd} for n, (m, sd) in pts.items()} for s, pts in self.curves().items()
            },
            "headline": self.headline(),
            "recommendation": self.recommendation(),
        }

    def recommendation(self) -> dict[str, Any] | None:
        """What ``recommend`` chooses from these curves, with what it was measured on."""
        c = self.config
        rec = recommend(self.curves(), c.initial, c.step, c.rounds)
        if rec is None:
            return None
        return rec | {
            "dataset": str(c.dataset),
            "model": self.model,
            "trainer": c.trainer,
            "metric": self.metric,
            "initial": c.initial,
            "step": c.step,
            "rounds": c.rounds,
            "seeds": c.seeds,
        }


def horizon_table(
    curves: dict[str, dict[int, tuple[float, float]]], initial: int, step: int, rounds: int
) -> dict[int, dict[str, Any]]:
    """For each horizon H (1 .. ``rounds``): the curves cut after H rounds, and per strategy (fraction of random's
    labels needed to reach random's mean metric at H rounds — None if not reached —, whether its mean is below
    random's at any of those rounds)."""
    out: dict[int, dict[str, Any]] = {}
    # the horizons are random's own points after the initial set (initial + H x step in a run of this config)
    measured = sorted(n for n in curves.get("random", {}) if n > initial)[:rounds]
    for h, last in enumerate(measured, start=1):
        cut = {name: {n: v for n, v in curve.items() if n <= last} for name, curve in curves.items()}
        random_curve = cut["random"]
        target = random_curve[last][0]
        row: dict[str, tuple[float | None, bool]] = {}
        for name, curve in cut.items():
            needed = _labels_to_reach(curve, target)
            below = any(m < random_curve[n][0] - 1e-12 for n, (m, _) in curve.items() if n in random_curve)
            row[name] = (None if needed is None else needed / last, below)
        out[h] = {"random_labels": last, "random_metric": target, "strategies": row}
    return out


def recommend(
    curves: dict[str, dict[int, tuple[float, float]]], initial: int, step: int, rounds: int
) -> dict[str, Any] | None:
    """The strategy to use on this data: among those never below random (mean over seeds; if every one is, among
    all), the one with the smallest mean fraction of random's labels over the horizons 1 .. ``rounds`` (a short
    run and a long one count alike); ties: the smaller worst case, then the name. A strategy that never reaches
    random at some horizon counts as needing 100 % there. None when only random was simulated."""
    table = horizon_table(curves, initial, step, rounds)
    if not table:
        return None
    scored = []
    for name in curves:
        if name == "random":
            continue
        fractions = [
            1.0 if table[h]["strategies"][name][0] is None else float(table[h]["strategies"][name][0]) for h in table
        ]
        below = any(table[h]["strategies"][name][1] for h in table)
        scored.append((below, sum(fractions) / len(fractions), max(fractions), name))
    if not scored:
        return None
    below, mean, worst, name = min(scored)
    return {
        "strategy": name,
        "worst_fraction_of_random_labels": worst,
        "mean_fraction_of_random_labels": mean,
        "below_random": below,
        "horizons": len(table),
        "ranking": [s[3] for s in sorted(scored)],
    }


def _labels_to_reach(curve: dict[int, tuple[float, float]], target: float) -> float | None:
    points = sorted(curve.items())
    for i, (n, (m, _)) in enumerate(points):
        if m >= target - 1e-12:
            if i == 0:
                return float(n)
            n0, (m0, _) = points[i - 1]
            return float(n0 + (n - n0) * (target - m0) / (m - m0)) if m > m0 else float(n)
    return None


# --------------------------------------------------------------------------------------------------------------------
# Datasets


def load_dataset(path: Path) -> Dataset:
    """A folder per class (any depth above: ``train/``, ``val/`` are merged), or an Ultralytics detection dataset
    (a ``data.yaml``)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise PoolError(f"dataset not found: {path}")
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _load_detection(path)
    if (path / "data.yaml").is_file():
        return _load_detection(path / "data.yaml")
    images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise PoolError(f"no images under {path}: expected a folder per class")
    names = sorted({p.parent.name for p in images})
    if len(names) < 2:
        raise PoolError(f"{path} has images of one class only ({names[0]}): expected a folder per class")
    index = {n: i for i, n in enumerate(names)}
    return Dataset(images, np.array([index[p.parent.name] for p in images], dtype=np.int64), names, root=path)


def _load_detection(data_yaml: Path) -> Dataset:
    yolo = read_data_yaml(data_yaml)
    if not yolo.images:
        raise PoolError(f"no images found through {data_yaml}")
    first = np.array([b[0][0] if b else -1 for b in yolo.boxes], dtype=np.int64)
    return Dataset(yolo.images, first, yolo.class_names, task="detect", detection_labels=yolo.boxes, root=yolo.root)


def dataset_imgsz(paths: Sequence[Path], sample: int = 64) -> int:
    """The median long side of the dataset's images, rounded up to a multiple of 32 (32 to 640)."""
    from curation.scoring.images import original_size

    sides = []
    for path in list(paths)[:: max(1, len(paths) // sample)][:sample]:
        try:
            sides.append(max(original_size(path)))
        except Exception:  # an unreadable image: scoring reports it
            continue
    side = float(np.median(sides)) if sides else 224.0
    return int(min(640, max(32, math.ceil(side / 32) * 32)))


def split_test(labels: NDArray[np.int64], fraction: float, seed: int) -> NDArray[np.bool_]:
    """A stratified test mask, fixed by ``seed``: every class keeps at least one item for the pool."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), dtype=bool)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        k = min(len(members) - 1, round(fraction * len(members)))
        test[members[:k]] = True
    return test


# --------------------------------------------------------------------------------------------------------------------
# The linear trainer


def standardize(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per-dimension standardisation with statistics of all images (labels are not involved)."""
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return ((x - mean) / np.where(std > 1e-8, std, 1.0)).astype(np.float32)


def fit_linear(
    x: NDArray[np.float32], y: NDArray[np.int64], n_classes: int, l2: float = 1e-3, iterations: int = 100
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Softmax regression by full-batch L-BFGS from zero weights: deterministic for the same inputs."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    w = torch.zeros((x.shape[1], n_classes), requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=iterations, line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), b.detach().numpy()


def predict_proba(x: NDArray[np.float32], w: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float32]:
    logits = x @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# The simulation


@dataclass
class PoolState:
    """What the model tells us about every image this round."""

    embeddings: NDArray[np.float32]  # (N, D) as stored (L2-normalised)
    n_classes: int
    scores_for: Callable[[NDArray[np.int64]], ClassificationScores | DetectionScores]  # outputs for these rows


def select_round(
    strategy_name: str,
    settings: StrategySettings,
    state: PoolState,
    candidates: NDArray[np.int64],
    labeled: NDArray[np.int64],
    budget: int,
) -> NDArray[np.int64]:
    """One selection exactly as ``curate select`` makes it, over the simulation's candidates."""
    settings = settings.model_copy(update={"name": strategy_name})
    strategy = build_strategy(settings)
    measure = strategy.measure or FALLBACK_MEASURE
    outputs = state.scores_for(candidates)
    uncertainty, classes = scores_uncertainty(outputs, state.n_classes, measure, settings.detection)
    probs = output_probs(outputs) if strategy.needs_probs else None
    if strategy.needs_probs and probs is None:
        raise ConfigError(f"strategy {strategy.name!r} needs class probabilities: classification datasets only")
    embeddings = reference = None
    if needs_embeddings(strategy, settings):
        embeddings = state.embeddings[candidates].copy()
        reference = state.embeddings[labeled].copy()
    view = build_view(uncertainty, classes, embeddings, reference, settings, probs)
    picked = strategy.select(view, min(budget, int(np.count_nonzero(~np.isnan(uncertainty)))))
    return candidates[picked.indices]


def simulate(
    config: SimulationConfig, settings: Settings, model_spec: str, *, progress: Progress | None = None
) -> SimulationResult:
    progress = progress or NullProgress()
    if config.trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer {config.trainer!r}; valid: {', '.join(TRAINERS)}")
    names = list(dict.fromkeys(["random", *config.strategies]))  # random is always the baseline
    for name in names:
        build_strategy(settings.strategy.model_copy(update={"name": name}))  # a bad name fails before any work
    if config.initial < 1 or config.step < 1 or config.rounds < 1 or config.seeds < 1:
        raise ConfigError("--initial, --step, --rounds and --seeds must be at least 1")
    data = load_dataset(config.dataset)
    if not settings.model.imgsz and model_spec.endswith((".yaml", ".yml")):
        # an architecture has no trained input size: use the dataset's (upscaling 32 px digits to 224 px only
        # blurs what random features can see)
        settings = settings.model_copy(
            update={"model": settings.model.model_copy(update={"imgsz": dataset_imgsz(data.paths)})}
        )
    if config.base_dataset is not None and config.trainer != "finetune":
        raise ConfigError("--base-dataset replays the model's training set while fine-tuning: use --trainer finetune")
    if data.task == "detect" and config.trainer == "linear":
        raise ConfigError("the linear trainer is for classification datasets; use --trainer finetune for detection")
    test = split_test(
        data.labels if data.task == "classify" else np.zeros(len(data.paths), np.int64),
        config.test_fraction,
        config.seed,
    )
    pool = np.flatnonzero(~test)
    needed = config.initial + config.rounds * config.step
    if needed > len(pool):
        raise ConfigError(
            f"the dataset's pool has {len(pool)} images (after the {int(test.sum())}-image test split) but the "
            f"simulation needs {needed} (--initial + --rounds x --step)"
        )
    if config.trainer == "linear":
        runner: _Runner = _LinearRunner(data, settings, model_spec, config, progress)
    else:
        runner = _FinetuneRunner(data, settings.train, settings.model, settings.scoring, model_spec, config)
    records: list[dict[str, Any]] = []
    total = config.seeds * len(names) * (config.rounds + 1)
    progress.start(f"simulating {len(names)} strategies x {config.seeds} seeds", total)
    try:
        for s in range(config.seeds):
            seed = config.seed + s
            rng = np.random.default_rng(seed)
            initial = np.sort(rng.choice(pool, size=config.initial, replace=False))
            for name in names:
                labeled = initial.copy()
                strategy_settings = settings.strategy.model_copy(update={"seed": seed})
                for round_ in range(config.rounds + 1):
                    state, metric = runner.round(labeled, test, seed)
                    record: dict[str, Any] = {
                        "strategy": name,
                        "seed": seed,
                        "round": round_,
                        "n_labeled": len(labeled),
                        "metric": float(metric),
                    }
                    records.append(record)
                    progress.advance(1)
                    if round_ == config.rounds:
                        break
                    candidates = np.setdiff1d(pool, labeled)
                    picked = select_round(name, strategy_settings, state, candidates, labeled, config.step)
                    record["selected"] = [data.relative(i) for i in picked]  # what this round added, for audits
                    labeled = np.sort(np.concatenate([labeled, picked]))
    finally:
        progress.finish()
        runner.close()
    return SimulationResult(
        config,
        runner.model_name,
        runner.metric,
        len(pool),
        int(test.sum()),
        records,
        [data.relative(i) for i in np.flatnonzero(test)],
    )


class _Runner:
    model_name: str
    metric: str

    def round(self, labeled: NDArray[np.int64], test: NDArray[np.bool_], seed: int) -> tuple[PoolState, float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _classification_state(probs: NDArray[np.float32], embeddings: NDArray[np.float32]) -> PoolState:
    return PoolState(embeddings, probs.shape[1], lambda rows: ClassificationScores(rows, probs[rows]))


def _score_dataset(
    paths: Sequence[Path], settings: Settings, model_spec: str, workdir: Path, progress: Progress, keep_db: bool
) -> tuple[Any, dict[Path, int], Any]:
    """Score the dataset's images with curate's own pipeline: embeddings and outputs. In a scratch database, or in
    ``settings.db`` when ``keep_db`` (a rerun then reuses the scores: same content, same model version)."""
    import curation.jobs.common
    import curation.jobs.score

    manifest = workdir / "dataset.txt"
    manifest.write_text("".join(f"{p}\n" for p in paths))
    scratch = settings.model_copy(
        update={
            "db": settings.db if keep_db else f"sqlite:///{workdir / 'simulate.db'}",
            # curate wrote this manifest itself, in a scratch folder, from the dataset the user named
            "pool": settings.pool.model_copy(update={"path": str(manifest), "allow_outside_root": True}),
            "model": settings.model.model_copy(update={"path": model_spec}),
        }
    )
    store = curation.jobs.common.open_store(scratch)
    outcome = curation.jobs.score.score(store, scratch, progress=progress)
    known = store.pools.known_paths(outcome.pool_id)
    rows = {Path(manifest.parent / k) if not Path(k).is_absolute() else Path(k): v.item_id for k, v in known.items()}
    return store, {p.resolve(): i for p, i in rows.items()}, outcome.model


class _LinearRunner(_Runner):
    def __init__(
        self, data: Dataset, settings: Settings, model_spec: str, config: SimulationConfig, progress: Progress
    ) -> None:
        self.data = data
        self.config = config
        self.metric = "accuracy"
        self._tmp = tempfile.TemporaryDirectory(prefix="curate-simulate-")
        store, item_of, mv = _score_dataset(
            data.paths, settings, model_spec, Path(self._tmp.name), progress, config.keep_db
        )
        self.model_name = mv.version
        ids = np.array([item_of.get(p.resolve(), -1) for p in data.paths], dtype=np.int64)
        if (ids < 0).any():
            bad = [str(p) for p, i in zip(data.paths, ids, strict=True) if i < 0][:3]
            raise PoolError(f"some dataset images could not be registered, e.g. {bad}")
        if not mv.embedding_dim:
            raise PoolError(f"model {mv.version} produced no embeddings")
        emb, found = store.scores.embeddings(mv.id, ids, mv.embedding_dim)
        store.close()
        if not found.all():
            bad = [str(p) for p, f in zip(data.paths, found, strict=True) if not f][:3]
            raise PoolError(f"{int((~found).sum())} dataset images could not be decoded, e.g. {bad}")
        self.embeddings = emb
        self.features = standardize(emb)

    def round(self, labeled: NDArray[np.int64], test: NDArray[np.bool_], seed: int) -> tuple[PoolState, float]:
        k = len(self.data.class_names)
        w, b = fit_linear(self.features[labeled], self.data.labels[labeled], k, l2=self.config.l2)
        probs = predict_proba(self.features, w, b)
        accuracy = float((np.argmax(probs[test], axis=1) == self.data.labels[test]).mean())
        return _classification_state(probs, self.embeddings), accuracy

    def close(self) -> None:
        self._tmp.cleanup()


class _FinetuneRunner(_Runner):
    """Fine-tune from the model every round (Ultralytics), then score the dataset with the new weights."""

    def __init__(
        self,
        data: Dataset,
        train: TrainSettings,
        model: ModelSettings,
        scoring: ScoringSettings,
        model_spec: str,
        config: SimulationConfig,
    ) -> None:
        self.data = data
        self.train = train
        self.model = model
        self.scoring = scoring
        self.model_spec = model_spec
        self.config = config
        self.metric = "accuracy" if data.task == "classify" else "map50_95"
        self.model_name = Path(model_spec).name
        self._tmp = tempfile.TemporaryDirectory(prefix="curate-simulate-")
        self._round = 0
        self._imgsz = train.imgsz or model.imgsz or dataset_imgsz(data.paths)  # not per round
        self._base = _base_rows(config.base_dataset, data) if config.base_dataset else []

    def round(self, labeled: NDArray[np.int64], test: NDArray[np.bool_], seed: int) -> tuple[PoolState, float]:
        from curation.training.trainer import evaluate, train_ultralytics, training_device

        self._round += 1
        work = Path(self._tmp.name) / f"r{self._round}"
        data_path, test_yaml = self._export(labeled, test, work, seed)
        trained = train_ultralytics(
            self.model_spec,
            data_path,
            work / "run",
            epochs=self.config.epochs,
            imgsz=self._imgsz,
            batch=self.train.batch_size,
            device=training_device("auto"),
            seed=seed,
            options={"val": False, **self.train.options},
        ).weights
        runtime = _load(self.model, self.scoring, str(trained))
        if self.data.task == "classify":
            probs, emb = _infer_classify(runtime, self.data.paths)
            probs = self._dataset_columns(runtime, probs)
            accuracy = float((np.argmax(probs[test], axis=1) == self.data.labels[test]).mean())
            return _classification_state(probs, emb), accuracy
        metrics = evaluate(str(trained), test_yaml, "detect", runtime.info.imgsz, 8, training_device("auto"))
        state = _detection_state(runtime, self.data.paths)
        return state, float(metrics["map50_95"])

    def _dataset_columns(self, runtime: Any, probs: NDArray[np.float32]) -> NDArray[np.float32]:
        """The model's probabilities in the dataset's class order. Ultralytics orders classes by folder name and
        knows only the classes of the labeled set: a class with no labeled example yet gets probability 0."""
        names = list(runtime.info.class_names)
        out = np.zeros((len(probs), len(self.data.class_names)), dtype=np.float32)
        for column, name in enumerate(self.data.class_names):
            if name in names:
                out[:, column] = probs[:, names.index(name)]
        return out

    def _export(self, labeled: NDArray[np.int64], test: NDArray[np.bool_], work: Path, seed: int) -> tuple[Path, Path]:
        """The round's training dataset (and, for detection, a ``test.yaml`` validating on the test split); with
        ``--base-dataset``, the base images replayed this round join the training split (as ``train.base_dataset``
        does in ``curate train``)."""
        root, data = work / "data", self.data
        base = self._replayed(len(labeled), seed)
        if data.task == "classify":
            for split in ("train", "val"):  # val is required by Ultralytics; validation is off ("val": False)
                for i in labeled:
                    folder = class_folder(root, split, data.class_names[data.labels[i]])
                    link(data.paths[i], folder / f"{i}{data.paths[i].suffix}")
            for k, (path, cls, _) in enumerate(base):
                link(path, class_folder(root, "train", data.class_names[cls]) / f"base{k}{path.suffix}")
            return root, root
        for split, rows in (("train", labeled), ("val", labeled), ("test", np.flatnonzero(test))):
            for i in rows:
                link(data.paths[i], yolo_image_path(root, split, f"{i}{data.paths[i].suffix}"))
                write_labels(root, split, str(i), [box_row(*row) for row in data.detection_labels[i]])
        for k, (path, _, boxes) in enumerate(base):
            link(path, yolo_image_path(root, "train", f"base{k}{path.suffix}"))
            write_labels(root, "train", f"base{k}", [box_row(*row) for row in boxes])
        train_yaml = write_data_yaml(root, data.class_names)
        return train_yaml, write_data_yaml(root, data.class_names, val="test", name="test.yaml")

    def _replayed(self, n_labeled: int, seed: int) -> list[tuple[Path, int, list[Box]]]:
        """This round's base images: all, or ``replay_ratio`` x the labeled count drawn afresh (seeded per round)."""
        ratio = self.config.replay_ratio
        if ratio is None or not self._base:
            return self._base
        k = min(len(self._base), round(ratio * n_labeled))
        rng = np.random.default_rng([seed, self._round])
        return [self._base[i] for i in sorted(rng.choice(len(self._base), size=k, replace=False))]

    def close(self) -> None:
        self._tmp.cleanup()


def _base_rows(path: Path, data: Dataset) -> list[tuple[Path, int, list[Box]]]:
    """The base dataset's training images (held-out ``val``/``valid``/``test`` folders left out, as in
    ``train.base_dataset``) with their class (classify) or boxes (detect) in the simulated dataset's class order;
    classes the simulated dataset does not have are dropped."""
    from curation.training.reference import HELD_OUT_FOLDERS

    base = load_dataset(path)
    if base.task != data.task:
        raise ConfigError(f"--base-dataset {path} is a {base.task} dataset; the simulated one is {data.task}")
    index = {name: data.class_names.index(name) for name in base.class_names if name in data.class_names}
    remap = {k: index[name] for k, name in enumerate(base.class_names) if name in index}
    rows: list[tuple[Path, int, list[Box]]] = []
    for k, image in enumerate(base.paths):
        parts = image.relative_to(base.root).parts[:-1] if base.root else ()
        if any(p.lower() in HELD_OUT_FOLDERS for p in parts):
            continue
        if data.task == "classify":
            if int(base.labels[k]) in remap:
                rows.append((image, remap[int(base.labels[k])], []))
        else:
            boxes = [(remap[b[0]], *b[1:]) for b in base.detection_labels[k] if b[0] in remap]
            rows.append((image, -1, boxes))
    if not rows:
        raise ConfigError(f"--base-dataset {path} has no training images of the simulated dataset's classes")
    return rows


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _load(model: ModelSettings, scoring: ScoringSettings, weights: str) -> Any:
    import torch

    from curation.scoring.runtime import load_model, resolve_device

    return load_model(
        model.model_copy(update={"path": weights, "version": None}),
        resolve_device(scoring.device) if _cuda() else torch.device("cpu"),
        scoring.precision,
    )


def _outputs(runtime: Any, paths: Sequence[Path]) -> Iterator[tuple[int, ItemOutput]]:
    """(position, model output) for every decodable image, through scoring's inference loop."""
    from curation.scoring.engine import ScoreJob, default_workers, inferred_batches

    jobs = [ScoreJob(i, p) for i, p in enumerate(paths)]
    for batch, outputs in inferred_batches(runtime, jobs, 32, workers=default_workers(None, runtime.device)):
        yield from zip(batch.positions, outputs, strict=True)


def _infer_classify(runtime: Any, paths: Sequence[Path]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    k = len(runtime.info.class_names)
    probs = np.zeros((len(paths), k), dtype=np.float32)
    emb: NDArray[np.float32] | None = None
    for pos, out in _outputs(runtime, paths):
        if emb is None:
            emb = np.zeros((len(paths), len(out.embedding)), dtype=np.float32)
        probs[pos] = out.probs
        emb[pos] = out.embedding
    if emb is None:
        raise PoolError("no dataset image could be decoded")
    return probs, emb


def _detection_state(runtime: Any, paths: Sequence[Path]) -> PoolState:
    k = len(runtime.info.class_names)
    n_boxes = np.zeros(len(paths), dtype=np.int64)
    conf: list[NDArray[np.float32]] = [np.zeros(0, np.float32)] * len(paths)
    scores: list[NDArray[np.float32]] = [np.zeros((0, k), np.float32)] * len(paths)
    emb: NDArray[np.float32] | None = None
    for pos, out in _outputs(runtime, paths):
        if emb is None:
            emb = np.zeros((len(paths), len(out.embedding)), dtype=np.float32)
        n_boxes[pos], conf[pos], scores[pos], emb[pos] = len(out.boxes), out.box_conf, out.box_scores, out.embedding
    if emb is None:
        raise PoolError("no dataset image could be decoded")

    def scores_for(rows: NDArray[np.int64]) -> DetectionScores:
        return DetectionScores(
            rows,
            n_boxes[rows],
            np.concatenate([conf[i] for i in rows]),
            np.concatenate([scores[i] for i in rows]).reshape(-1, k),
        )

    return PoolState(emb, k, scores_for)


# --------------------------------------------------------------------------------------------------------------------
# Reporting


def record_recommendation(result: SimulationResult, settings: Settings) -> dict[str, Any] | None:
    """Keep the run's recommendation in ``settings.db`` (the user's database, not the scratch one scores went to),
    where ``strategy: auto`` reads it. None (nothing stored) when only random was simulated."""
    import datetime

    import curation.jobs.common

    rec = result.recommendation()
    if rec is None:
        return None
    rec = rec | {"recorded_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    store = curation.jobs.common.open_store(settings)
    try:
        store.recommendations.record(rec)
    finally:
        store.close()
    return rec


def plot_curves(result: SimulationResult, path: Path) -> Path:
    """Learning curves: the mean over seeds with a ±1 std band per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from curation.reporting.figures import draw_learning_curves

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves = {name: [(n, m, sd) for n, (m, sd) in curve.items()] for name, curve in result.curves().items()}
    draw_learning_curves(ax, curves)
    c = result.config
    ax.set_xlabel("labeled images")
    ax.set_ylabel(f"test {result.metric}")
    ax.set_title(f"{c.dataset.name}: {c.trainer} trainer, {c.seeds} seed(s), test split {result.test_size}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(result: SimulationResult, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(result.to_json(), indent=2))


def fmt_fraction(value: float | None) -> str:
    return "not reached" if value is None or math.isnan(value) else f"{value:.0%}"

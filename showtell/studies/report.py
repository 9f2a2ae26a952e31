"""The report of an ablation study: tables and a figure from its finished runs.

    python -m showtell.ablate SPEC.yaml --report      # (also written at the end of every study)

Written into the study's report folder:

- ``results.csv``: one row per run (and decoding): grid values, seed, decoding, epochs, best epoch, best
  validation BLEU-4, every test metric (x100, empty when not computed), wall time (min), run folder.
- ``results.md``: one row per system (grid cell x decoding): test metrics (x100) as mean ± sample std over
  the seeds, computed from the rows of results.csv; then every system against the baseline (the grid's
  first cell at the first decoding) on test BLEU-4 and CIDEr-D by a paired bootstrap.
- ``results.png``: one panel per metric: each system's mean ± std, its seeds as dots.

The paired bootstrap (Koehn 2004) draws the test images with replacement (pairing the systems by image id,
on the images they share) and pools each system's seeds: BLEU-4 is corpus BLEU of the per-image n-gram
statistics summed over the drawn images and the seeds; CIDEr-D is the mean of per-image scores (computed
once per run, document frequencies from its test references, as coco-caption does). Reading the table:
Δ is system - baseline (x100), the mean over resamples with its 95% percentile interval; "win" is the
fraction of resamples in which the system scores higher (ties count half). A win near 1.0 (or 0.0) with an
interval excluding 0 is a real difference on these test images; near 0.5 there is none. The bootstrap
covers the choice of test images, not training noise: read it next to the seed std of the first table.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from showtell.files import read_json
from showtell.metrics.bleu import BLEU_SMALL, BLEU_TINY, bleu_statistics
from showtell.metrics.cider import cider_d_scores
from showtell.metrics.scores import METRIC_NAMES, as_tokens
from showtell.studies.spec import Run, Spec, cell_key

METRICS = tuple(METRIC_NAMES)
LABELS = METRIC_NAMES
PLOTTED = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "cider")
TESTED = ("bleu4", "cider")  # metrics of the significance table
RUN_COLUMNS = ("seed", "decoding", "epochs", "best_epoch", "val_bleu4", *METRICS, "wall_min", "folder")
FILES = ("results.csv", "results.md", "results.png")


# ----------------------------------------------------------------------------------------- finished runs


@dataclass
class Captions:
    """A run's test captions, one per image: ids, hypotheses and references as strings."""

    image_ids: list[str]
    hypotheses: list[str]
    references: list[list[str]]


@dataclass
class Result:
    """One finished run at one decoding."""

    run: Run
    decoding: str
    metrics: dict[str, float | None]  # fractions, as in test_metrics.json
    captions: Captions
    summary: dict[str, Any]  # fit_summary.json ({} if absent)
    record: dict[str, Any]  # run.json ({} if absent)


@dataclass
class System:
    """A grid cell at one decoding, with its finished runs (one per seed) and their results.csv rows."""

    cell: dict[str, Any]
    decoding: str
    results: list[Result] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def label(self, with_decoding: bool) -> str:
        values = ", ".join(_text(v) for v in self.cell.values())
        return f"{values} / {self.decoding}" if with_decoding else values


def _text(value: Any) -> str:
    """An option value as written on train.py's command line (and in the tables)."""
    return value if isinstance(value, str) else json.dumps(value)


def _fraction(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_captions(path: Path) -> Captions:
    """``test_captions.jsonl`` (image_id, caption, references); the first line of a repeated image counts."""
    captions = Captions([], [], [])
    seen = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object")
        image_id, hypothesis, references = (record.get(k) for k in ("image_id", "caption", "references"))
        if image_id is None or not isinstance(hypothesis, str) or not isinstance(references, list) \
                or not references or not all(isinstance(r, str) for r in references):
            raise ValueError(f"{path}:{number}: expected image_id, caption (string) and references (strings)")
        if str(image_id) not in seen:
            seen.add(str(image_id))
            captions.image_ids.append(str(image_id))
            captions.hypotheses.append(hypothesis)
            captions.references.append(references)
    if not captions.image_ids:
        raise ValueError(f"{path}: no captions")
    return captions


def collect_results(spec: Spec, runs: Sequence[Run]) -> tuple[list[Result], list[str]]:
    """The finished results of ``runs`` (one per run, or one per run and beam of ``spec.decode``) and the
    names of those left out (not finished, or unreadable)."""
    results, missing = [], []
    for run in runs:
        metrics_file = run.metrics_file()
        summary = (read_json(metrics_file.parent / "fit_summary.json") if metrics_file else None) or {}
        record = read_json(run.folder / "run.json") or {}
        if spec.decode:
            outputs = [(f"beam {b}", run.folder / "decode" / f"beam{b}") for b in spec.decode]
        else:
            beam = summary.get("test_beam_size")
            outputs = [("test" if beam is None else f"beam {beam}", metrics_file.parent if metrics_file else None)]
        for decoding, folder in outputs:
            name = f"{run.cell_name} seed{run.seed}" + (f" {decoding}" if spec.decode else "")
            metrics = read_json(folder / "test_metrics.json") if metrics_file and folder else None
            if metrics is None:
                missing.append(name)
                continue
            try:
                captions = read_captions(folder / "test_captions.jsonl")
            except (OSError, ValueError):
                missing.append(f"{name} (unreadable test_captions.jsonl)")
                continue
            results.append(Result(run, decoding, {k: _fraction(metrics.get(k)) for k in METRICS}, captions,
                                  summary, record))
    return results, missing


def _x100(value: float | None, digits: int = 2) -> float | str:
    return "" if value is None else round(100 * value, digits)


def result_row(spec: Spec, result: Result) -> dict[str, Any]:
    """The results.csv row of one result (metrics x100, '' where missing)."""
    summary, wall_s = result.summary, _fraction(result.record.get("wall_s"))
    monitor = summary.get("monitor") or ""
    row: dict[str, Any] = {key: _text(result.run.cell.get(key)) for key in spec.grid}
    row.update(seed=result.run.seed, decoding=result.decoding, epochs=summary.get("epochs", ""),
               best_epoch=summary.get("best_epoch", ""),
               val_bleu4=_x100(_fraction(summary.get("best_score"))) if monitor.endswith("bleu4") else "")
    row.update({metric: _x100(result.metrics[metric]) for metric in METRICS})
    row.update(wall_min="" if wall_s is None else round(wall_s / 60, 2), folder=str(result.run.folder))
    return {k: "" if v is None else v for k, v in row.items()}


def group_systems(spec: Spec, results: Sequence[Result]) -> list[System]:
    """The systems with at least one finished run: grid order, then the order of the decodings."""
    decodings = [f"beam {b}" for b in spec.decode] or list(dict.fromkeys(r.decoding for r in results))
    systems = {(cell_key(cell), d): System(cell, d) for cell in spec.cells() for d in decodings}
    for result in results:
        system = systems[(result.run.cell_name, result.decoding)]
        system.results.append(result)
        system.rows.append(result_row(spec, result))
    return [s for s in systems.values() if s.results]


# -------------------------------------------------------------------------------------- paired bootstrap


@dataclass
class ImageStats:
    """Per-image statistics of one system, seeds stacked, aligned on ``image_ids``."""

    image_ids: list[str]
    bleu: np.ndarray  # (S, N, 10): [hyp_len, ref_len, correct_1..4, total_1..4] (showtell.metrics)
    cider: np.ndarray  # (S, N): CIDEr-D per image, coco scale

    @classmethod
    def from_captions(cls, image_ids: Sequence[str], hypotheses: Sequence[str | Sequence[str]],
                      references: Sequence[Sequence[str | Sequence[str]]]) -> ImageStats:
        """One run: captions as strings (tokenized as the metrics do) or token lists."""
        hyps = [as_tokens(h) for h in hypotheses]
        refs = [[as_tokens(r) for r in rs] for rs in references]
        bleu = np.array([bleu_statistics(h, rs) for h, rs in zip(hyps, refs)], dtype=np.float64)
        cider = cider_d_scores(hyps, refs)  # document frequencies from these references, as coco-caption
        return cls([str(i) for i in image_ids], bleu.reshape(1, len(hyps), -1), cider.reshape(1, -1))

    @classmethod
    def pool(cls, parts: Sequence[ImageStats]) -> ImageStats:
        """Several seeds of one system, on the images they all have."""
        shared = set.intersection(*(set(p.image_ids) for p in parts))
        ids = [i for i in parts[0].image_ids if i in shared]
        parts = [p.select(ids) for p in parts]
        return cls(ids, np.concatenate([p.bleu for p in parts]), np.concatenate([p.cider for p in parts]))

    def select(self, image_ids: Sequence[str]) -> ImageStats:
        position = {image_id: k for k, image_id in enumerate(self.image_ids)}
        index = np.array([position[i] for i in image_ids], dtype=np.int64)
        return ImageStats(list(image_ids), self.bleu[:, index], self.cider[:, index])


@dataclass
class Comparison:
    """System A against B on resamples of their shared test images (differences as fractions)."""

    metric: str
    mean: float  # mean over resamples of metric(A) - metric(B)
    low: float  # 2.5th percentile
    high: float  # 97.5th percentile
    win: float  # fraction of resamples with A > B, ties counting half
    images: int  # shared images
    resamples: int


def resample_counts(num_images: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(R, N): how often each image is drawn in each resample of N draws with replacement."""
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    flat = (draws + num_images * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=resamples * num_images).reshape(resamples, num_images).astype(np.float64)


def bleu_of_statistics(stats: np.ndarray, n: int = 4) -> np.ndarray:
    """BLEU-n of every row of summed statistics (..., 10): showtell.metrics.bleu.bleu_from_statistics, vectorised."""
    max_n = (stats.shape[-1] - 2) // 2
    product = np.ones(stats.shape[:-1])
    for k in range(n):  # coco-caption's operations, in its order
        product = product * ((stats[..., 2 + k] + BLEU_TINY) / (stats[..., 2 + max_n + k] + BLEU_SMALL))
    score = product ** (1.0 / n)
    ratio = (stats[..., 0] + BLEU_TINY) / (stats[..., 1] + BLEU_SMALL)
    return np.where(ratio < 1, score * np.exp(1 - 1 / ratio), score)


def resampled_metric(stats: ImageStats, metric: str, counts: np.ndarray) -> np.ndarray:
    """The metric of ``stats`` on every resample (rows of ``counts``), the seeds pooled."""
    if metric == "cider":
        return counts @ stats.cider.sum(0) / (counts.shape[1] * stats.cider.shape[0])
    if metric.startswith("bleu") and metric[4:].isdigit():
        return bleu_of_statistics(counts @ stats.bleu.sum(0), int(metric[4:]))
    raise ValueError(f"the bootstrap knows bleu1..bleu4 and cider, not {metric!r}")


def paired_bootstrap(stats_a: ImageStats, stats_b: ImageStats, metric: str = "bleu4", resamples: int = 1000,
                     seed: int = 0) -> Comparison:
    """Paired bootstrap of A - B on the images both have (the same resamples for both)."""
    shared = [i for i in stats_b.image_ids if i in set(stats_a.image_ids)]
    if not shared:
        raise ValueError("the two systems share no test image")
    a, b = stats_a.select(shared), stats_b.select(shared)
    counts = resample_counts(len(shared), resamples, seed)
    diff = resampled_metric(a, metric, counts) - resampled_metric(b, metric, counts)
    low, high = np.percentile(diff, [2.5, 97.5])
    win = float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    return Comparison(metric, float(diff.mean()), float(low), float(high), win, len(shared), resamples)


def system_stats(system: System) -> ImageStats:
    return ImageStats.pool([ImageStats.from_captions(r.captions.image_ids, r.captions.hypotheses,
                                                     r.captions.references) for r in system.results])


# ------------------------------------------------------------------------------------------------- tables


def mean_std(values: Sequence[float]) -> str:
    """``mean ± std`` (sample std, one decimal); the mean alone for one value; ``n/a`` for none."""
    if not values:
        return "n/a"
    mean = f"{statistics.fmean(values):.1f}"
    return f"{mean} ± {statistics.stdev(values):.1f}" if len(values) > 1 else mean


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary_table(spec: Spec, systems: Sequence[System]) -> list[str]:
    header = [*spec.grid, "decoding", "n", *(LABELS[m] for m in METRICS)]
    rows = []
    for system in systems:
        cells = [_text(system.cell[k]) for k in spec.grid] + [system.decoding, str(len(system.rows))]
        cells += [mean_std([row[m] for row in system.rows if row[m] != ""]) for m in METRICS]
        rows.append(cells)
    return _table(header, rows)


def significance_table(spec: Spec, systems: Sequence[System], resamples: int, bootstrap_seed: int) -> list[str]:
    baseline, others = systems[0], systems[1:]
    base_stats = system_stats(baseline)
    header = [*spec.grid, "decoding", "n", "images"]
    for metric in TESTED:
        header += [f"Δ {LABELS[metric]} [95% CI]", f"{LABELS[metric]} win"]
    rows, notes = [], []
    for system in others:
        stats = system_stats(system)
        cells = [_text(system.cell[k]) for k in spec.grid] + [system.decoding, str(len(system.results))]
        try:
            comparisons = [paired_bootstrap(stats, base_stats, m, resamples, bootstrap_seed) for m in TESTED]
        except ValueError as err:  # no shared image
            rows.append(cells + ["0"] + ["n/a"] * 2 * len(TESTED))
            notes.append(f"Note: {system.label(True)}: {err}.")
            continue
        images = comparisons[0].images
        cells.append(str(images))
        for c in comparisons:
            cells += [f"{100 * c.mean:+.2f} [{100 * c.low:+.2f}, {100 * c.high:+.2f}]", f"{c.win:.2f}"]
        rows.append(cells)
        counts = {len(r.captions.image_ids) for r in system.results + baseline.results}
        if counts != {images}:
            notes.append(f"Note: {system.label(True)} and the baseline differ in their test images (runs "
                         f"with {', '.join(map(str, sorted(counts)))}); compared on the {images} they all have.")
    title = (f"## Paired bootstrap against the baseline ({baseline.label(True)}): {resamples} resamples of the "
             "test images, seeds pooled, x100")
    return ["", title, "", *_table(header, rows), *(["", *notes] if notes else [])]


HOW_TO_READ = [
    "How to read this: Δ = system - baseline (x100), mean over resamples with its 95% interval; win = share of "
    "resamples where the system scores higher (ties count half).",
    "A win near 1.0 or 0.0 with an interval excluding 0 is a real difference on these test images; near 0.5, "
    "none. The bootstrap ignores training noise: compare Δ with the seed std above.",
]


def markdown(spec: Spec, systems: Sequence[System], resamples: int, bootstrap_seed: int) -> str:
    lines = [f"## {spec.name}: test metrics (x100), mean ± std over seeds", ""]
    if not systems:
        return "\n".join([*lines, "No finished runs yet."]) + "\n"
    lines += summary_table(spec, systems)
    if len(systems) > 1 and resamples > 0:
        lines += [*significance_table(spec, systems, resamples, bootstrap_seed), "", HOW_TO_READ[0], "", HOW_TO_READ[1]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- figure


def plot_results(spec: Spec, systems: Sequence[System], path: Path) -> None:
    """One panel per metric: each system's mean ± std (point and error bar), its seeds as dots."""
    from matplotlib.figure import Figure  # lazily: only the report needs matplotlib; no pyplot, no display

    metrics = [m for m in PLOTTED if any(row[m] != "" for s in systems for row in s.rows)]
    with_decoding = len({s.decoding for s in systems}) > 1
    labels = [s.label(with_decoding) for s in systems]
    columns = min(3, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    width = max(3.2, 0.9 + 0.55 * len(systems))
    figure = Figure(figsize=(columns * width, rows * 3.2 + 0.6), layout="constrained")
    figure.suptitle(f"{spec.name}: test metrics, mean ± std over seeds (dots: seeds; dashed line: baseline)")
    xlabel = " x ".join(spec.grid) + (" / decoding" if with_decoding else "")
    rotate = len(systems) > 4 or max(map(len, labels)) > 8
    for k, metric in enumerate(metrics):
        ax = figure.add_subplot(rows, columns, k + 1)
        for x, system in enumerate(systems):
            values = [row[metric] for row in system.rows if row[metric] != ""]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.errorbar(x, statistics.fmean(values), yerr=std, fmt="o", color="C0", ms=7, capsize=5, zorder=3)
            ax.scatter(x + np.linspace(-0.12, 0.12, len(values)), values, s=14, color="0.3", zorder=4)
        baseline = [row[metric] for row in systems[0].rows if row[metric] != ""]
        if baseline:
            ax.axhline(statistics.fmean(baseline), color="0.6", linestyle="--", linewidth=1, zorder=1)
        ax.set_xticks(range(len(systems)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(systems) - 0.4)
        ax.set_ylabel(f"test {LABELS[metric]} (x100)")
        ax.grid(axis="y", alpha=0.3)
        if k >= len(metrics) - columns:
            ax.set_xlabel(xlabel)
    figure.savefig(path, dpi=120)


# ----------------------------------------------------------------------------------------------- report


def write_csv(spec: Spec, systems: Sequence[System], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[*spec.grid, *RUN_COLUMNS])
        writer.writeheader()
        for system in systems:
            writer.writerows(system.rows)


def write_report(spec: Spec, runs: Sequence[Run], out_dir: str | Path, resamples: int = 1000,
                 bootstrap_seed: int = 0) -> None:
    """Write results.csv, results.md and results.png of the finished ``runs`` into ``out_dir``; print the
    tables. Unfinished runs are left out (one line says which)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, missing = collect_results(spec, runs)
    total = len(results) + len(missing)
    if missing:
        what = "run decodes" if spec.decode else "runs"
        print(f"report {spec.name}: {len(missing)} of {total} {what} not finished, left out: {'; '.join(missing)}")
    systems = group_systems(spec, results)
    write_csv(spec, systems, out_dir / "results.csv")
    text = markdown(spec, systems, resamples, bootstrap_seed)
    (out_dir / "results.md").write_text(text, encoding="utf-8")
    figure = out_dir / "results.png"
    if systems:
        plot_results(spec, systems, figure)
    else:
        figure.unlink(missing_ok=True)  # never leave a figure of older runs next to empty tables
    print(text, end="")
    written = FILES if systems else FILES[:2]
    print(f"wrote {', '.join(written)} in {out_dir}")

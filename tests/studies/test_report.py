"""The ablation report on hand-made run folders: tables, figure, paired bootstrap, unfinished runs, decodes."""

from __future__ import annotations

import csv
import json
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from showtell.metrics.bleu import bleu_from_statistics, corpus_bleu
from showtell.metrics.cider import cider_d
from showtell.metrics.rouge import rouge_l
from showtell.studies.report import (
    RUN_COLUMNS,
    ImageStats,
    bleu_of_statistics,
    paired_bootstrap,
    resample_counts,
    write_report,
)
from showtell.studies.spec import Run, Spec, plan_runs

WORDS = ["a", "dog", "cat", "man", "woman", "runs", "jumps", "sits", "on", "the", "grass", "red", "blue", "ball",
         "water", "beach", "snow", "in", "with", "two"]
NUM_IMAGES = 30


def references(num_images: int = NUM_IMAGES) -> dict[str, list[str]]:
    rng = random.Random(0)
    return {f"img{i:03d}.jpg": [" ".join(rng.choices(WORDS, k=rng.randint(6, 11))) for _ in range(5)]
            for i in range(num_images)}


def noisy_captions(refs: dict[str, list[str]], noise: float, seed: int) -> list[dict]:
    """Each image's first reference with a share ``noise`` of its words replaced at random."""
    rng = random.Random(seed)
    records = []
    for image_id, rs in refs.items():
        words = [rng.choice(WORDS) if rng.random() < noise else w for w in rs[0].split()]
        records.append({"image_id": image_id, "caption": " ".join(words), "references": rs})
    return records


def write_outputs(folder: Path, records: list[dict]) -> None:
    """test_captions.jsonl and test_metrics.json as the module writes them (METEOR not computed: null)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    hyps = [r["caption"].split() for r in records]
    refs = [[ref.split() for ref in r["references"]] for r in records]
    metrics = {**corpus_bleu(hyps, refs), "meteor": None, "rougeL": rouge_l(hyps, refs), "cider": cider_d(hyps, refs)}
    (folder / "test_metrics.json").write_text(json.dumps(metrics))


def write_run(run: Run, records: list[dict], decode: dict[int, list[dict]] | None = None) -> None:
    """A finished run folder: run.json, and train.py's outputs under lightning_logs/version_0."""
    out = run.folder / "lightning_logs" / "version_0"
    write_outputs(out, records)
    (out / "fit_summary.json").write_text(json.dumps(
        {"epochs": 10, "best_epoch": 7 + run.seed, "monitor": "val/bleu4", "best_score": 0.2512 + 0.01 * run.seed,
         "best_checkpoint": str(out / "best.ckpt"), "fit_s": 60.0, "test_s": 5.0, "test_beam_size": 3}))
    (run.folder / "run.json").write_text(json.dumps(
        {"cell": run.cell_name, "values": run.cell, "seed": run.seed, "status": "done", "wall_s": 90.0 + run.seed,
         "command": ["python", "train.py"]}))
    for beam, beam_records in (decode or {}).items():
        write_outputs(run.folder / "decode" / f"beam{beam}", beam_records)


NOISE = {"pre": 0.5, "merge": 0.2}


def toy_spec(decode: list[int] | None = None) -> Spec:
    return Spec(name="toy", base=["configs/demo.yaml"], grid={"model.conditioning": ["pre", "merge"]},
                seeds=[0, 1], decode=decode or [])


def finished_study(root: Path, decode: list[int] | None = None, skip: int | None = None) -> tuple[Spec, list[Run]]:
    spec, refs = toy_spec(decode), references()
    runs = plan_runs(spec, root / "runs")
    for k, run in enumerate(runs):
        if k == skip:
            continue
        noise = NOISE[run.cell["model.conditioning"]]
        beams = {b: noisy_captions(refs, noise, 100 * b + run.seed) for b in spec.decode}
        write_run(run, noisy_captions(refs, noise, run.seed), beams)
    return spec, runs


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(markdown: str, first_header: str) -> list[list[str]]:
    """Rows of the Markdown table whose header starts with ``first_header``."""
    lines = markdown.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def mean_std_of(values: list[float]) -> str:
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def test_report_tables_and_figure(tmp_path, capsys):
    spec, runs = finished_study(tmp_path)
    out = tmp_path / "report"
    write_report(spec, runs, out, resamples=200)
    printed = capsys.readouterr().out

    rows = read_csv(out / "results.csv")
    assert len(rows) == 4
    assert list(rows[0]) == ["model.conditioning", *RUN_COLUMNS]
    assert [(r["model.conditioning"], r["seed"], r["decoding"]) for r in rows] == [
        ("pre", "0", "beam 3"), ("pre", "1", "beam 3"), ("merge", "0", "beam 3"), ("merge", "1", "beam 3")]
    assert rows[1]["val_bleu4"] == "26.12" and rows[1]["best_epoch"] == "8" and rows[1]["wall_min"] == "1.52"
    assert rows[0]["meteor"] == "" and rows[0]["folder"] == str(runs[0].folder)
    metrics = json.loads((runs[0].folder / "lightning_logs/version_0/test_metrics.json").read_text())
    assert float(rows[0]["bleu4"]) == round(100 * metrics["bleu4"], 2)

    markdown = (out / "results.md").read_text()
    summary = table_rows(markdown, "model.conditioning")
    columns = ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"]
    assert [row[:3] for row in summary] == [["pre", "beam 3", "2"], ["merge", "beam 3", "2"]]
    for row in summary:
        seeds = [r for r in rows if r["model.conditioning"] == row[0]]
        expected = [mean_std_of([float(r[m]) for r in seeds]) if m != "meteor" else "n/a" for m in columns]
        assert row[3:] == expected

    significance = table_rows(markdown.split("Paired bootstrap")[1], "model.conditioning")
    assert len(significance) == 1 and significance[0][:4] == ["merge", "beam 3", "2", str(NUM_IMAGES)]
    assert float(significance[0][5]) > 0.9  # less noise: better BLEU-4 on nearly every resample
    assert "How to read this" in markdown

    with Image.open(out / "results.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
        image.verify()
    assert markdown in printed
    assert printed.rstrip().endswith(f"wrote results.csv, results.md, results.png in {out}")


def test_unfinished_runs_are_left_out(tmp_path, capsys):
    spec, runs = finished_study(tmp_path, skip=3)  # runs are seed-major: [pre s0, merge s0, pre s1, merge s1]
    (runs[1].folder / "lightning_logs/version_0/test_captions.jsonl").write_text("not json\n")
    write_report(spec, runs, tmp_path / "report", resamples=50)
    printed = capsys.readouterr().out
    assert ("report toy: 2 of 4 runs not finished, left out: model.conditioning=merge seed0 (unreadable "
            "test_captions.jsonl); model.conditioning=merge seed1") in printed
    assert len(read_csv(tmp_path / "report/results.csv")) == 2
    summary = table_rows((tmp_path / "report/results.md").read_text(), "model.conditioning")
    assert [row[:3] for row in summary] == [["pre", "beam 3", "2"]]  # nothing to compare against


def test_no_finished_run(tmp_path, capsys):
    spec = toy_spec()
    write_report(spec, plan_runs(spec, tmp_path / "runs"), tmp_path / "report")
    printed = capsys.readouterr().out
    assert "4 of 4 runs not finished" in printed and "No finished runs yet." in printed
    assert not (tmp_path / "report/results.png").exists()
    assert read_csv(tmp_path / "report/results.csv") == []


def test_decode_layout_gives_one_system_per_beam(tmp_path, capsys):
    spec, runs = finished_study(tmp_path, decode=[1, 5])
    (runs[3].folder / "decode/beam5/test_metrics.json").unlink()  # that decode has not finished
    write_report(spec, runs, tmp_path / "report", resamples=50)
    printed = capsys.readouterr().out
    assert "1 of 8 run decodes not finished, left out: model.conditioning=merge seed1 beam 5" in printed
    rows = read_csv(tmp_path / "report/results.csv")
    assert [(r["model.conditioning"], r["decoding"]) for r in rows] == [
        ("pre", "beam 1"), ("pre", "beam 1"), ("pre", "beam 5"), ("pre", "beam 5"),
        ("merge", "beam 1"), ("merge", "beam 1"), ("merge", "beam 5")]
    markdown = (tmp_path / "report/results.md").read_text()
    summary = table_rows(markdown, "model.conditioning")
    assert [row[:3] for row in summary] == [["pre", "beam 1", "2"], ["pre", "beam 5", "2"],
                                            ["merge", "beam 1", "2"], ["merge", "beam 5", "1"]]
    assert "baseline (pre / beam 1)" in markdown
    assert len(table_rows(markdown.split("Paired bootstrap")[1], "model.conditioning")) == 3
    assert (tmp_path / "report/results.png").is_file()


def test_different_image_sets_are_intersected(tmp_path):
    spec, runs = finished_study(tmp_path)
    captions = runs[3].folder / "lightning_logs/version_0/test_captions.jsonl"
    captions.write_text("".join(captions.read_text().splitlines(keepends=True)[:-2]))
    write_report(spec, runs, tmp_path / "report", resamples=50)
    markdown = (tmp_path / "report/results.md").read_text()
    assert table_rows(markdown.split("Paired bootstrap")[1], "model.conditioning")[0][3] == str(NUM_IMAGES - 2)
    assert f"compared on the {NUM_IMAGES - 2} they all have" in markdown


def stats_of(records: list[dict]) -> ImageStats:
    return ImageStats.from_captions([r["image_id"] for r in records], [r["caption"] for r in records],
                                    [r["references"] for r in records])


@pytest.mark.parametrize("metric", ["bleu4", "cider"])
def test_bootstrap_of_identical_systems_is_a_tie(metric):
    stats = stats_of(noisy_captions(references(), 0.4, seed=0))
    result = paired_bootstrap(stats, stats_of(noisy_captions(references(), 0.4, seed=0)), metric, 300, seed=1)
    assert result.low <= 0 <= result.high and result.mean == 0 and result.win == 0.5


@pytest.mark.parametrize("metric", ["bleu4", "cider"])
def test_bootstrap_of_a_system_better_on_every_image(metric):
    refs = references()
    good = stats_of([{"image_id": i, "caption": rs[1], "references": rs} for i, rs in refs.items()])
    bad = stats_of([{"image_id": i, "caption": "zebra violin cloud", "references": rs} for i, rs in refs.items()])
    result = paired_bootstrap(good, bad, metric, 300)
    assert result.win == 1.0 and result.low > 0 and result.images == NUM_IMAGES
    assert paired_bootstrap(bad, good, metric, 300).win == 0.0


def test_per_image_statistics_give_the_test_metrics():
    records = noisy_captions(references(), 0.3, seed=5)
    stats = stats_of(records)
    hyps = [r["caption"].split() for r in records]
    refs = [[ref.split() for ref in r["references"]] for r in records]
    ones = np.ones((1, NUM_IMAGES))  # the whole test set, each image once
    assert bleu_of_statistics(ones @ stats.bleu.sum(0))[0] == pytest.approx(corpus_bleu(hyps, refs)["bleu4"], 1e-12)
    assert stats.cider.mean() == pytest.approx(cider_d(hyps, refs), 1e-12)
    random_stats = np.random.default_rng(0).integers(0, 50, size=(20, 10)).astype(np.float64)
    for n in (1, 4):
        expected = [bleu_from_statistics(row)[f"bleu{n}"] for row in random_stats]
        np.testing.assert_allclose(bleu_of_statistics(random_stats, n), expected, rtol=1e-12)


def test_resample_counts_draw_every_image_count_times():
    counts = resample_counts(7, 5, seed=3)
    assert counts.shape == (5, 7) and (counts.sum(1) == 7).all()
    np.testing.assert_array_equal(counts, resample_counts(7, 5, seed=3))  # fixed seed: same resamples

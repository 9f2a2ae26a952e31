"""showtell.bench_caption: the captioning benchmark's image folder and one quick run (one process)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from showtell.bench_caption import main
from showtell.perf.caption_speed import format_table, repeat_images


def test_repeat_images_cycles_through_the_folder(tmp_path):
    source, folder = tmp_path / "source", tmp_path / "links"
    source.mkdir()
    folder.mkdir()
    for name in ("b.jpg", "a.png"):
        Image.new("RGB", (8, 8)).save(source / name)
    (source / "notes.txt").write_text("skipped\n")
    assert repeat_images(source, folder, 5) == 5
    links = sorted(folder.iterdir())
    assert [p.name for p in links] == ["000000_a.png", "000001_b.jpg", "000002_a.png", "000003_b.jpg", "000004_a.png"]
    assert all(p.is_symlink() and p.resolve().parent == source.resolve() for p in links)
    assert repeat_images(source, tmp_path, 0) == 2  # all of them, once


@pytest.mark.slow
def test_benchmark_runs_the_command(tiny_checkpoint, tmp_path):
    out = tmp_path / "bench.json"
    results = main(["--ckpt", str(tiny_checkpoint), "--num_images", "6", "--image_size", "48", "--batch_size", "2",
                    "--devices", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    (run,) = results["runs"]
    assert run["devices"] == 1 and run["images_per_s"] > 0 and len(run["wall_s"]) == 1
    assert run["command"][1:3] == ["-m", "showtell.caption"] and results["output_lines"] == {"1": 6}
    assert results["hardware"]["cpu_cores"] >= 1 and results["hardware"]["torch"]
    assert "images/s" in format_table(results)

"""Multi-process runs end to end: ``train.py`` and ``showtell.evaluate`` with 2 CPU processes (gloo, Lightning's
``ddp`` strategy), as a user runs them on a multi-GPU machine.

Every run is a subprocess in its own session with a wall-clock limit (the whole process group is killed when it
passes), and ``--collective_timeout`` is short, so a deadlock fails the test within a minute instead of freezing
the suite. The data: a 44-image synthetic demo (5 val and 5 test images: odd, so Lightning's padding
``DistributedSampler`` repeats one image per split), a tiny model, METEOR's Java replaced by a failing stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from showtell.data.sources import load_corpus
from showtell.data.synthetic import generate_demo

REPO = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parents[1]
LIMIT_S = 150  # wall-clock limit of one multi-process command (they take 20-40 s on 2 busy cores)
TIMEOUT_S = 30  # --collective_timeout of the runs: a deadlock ends within it
DEMO = {"--data.demo_images": "44", "--data.demo_image_size": "48", "--data.demo_seed": "0"}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Child environment: one thread per process, a free port picked by Lightning, no JVM for METEOR, no wandb
    network, ``tests/`` importable (for ``_ddp_helpers``)."""
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "java").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "java").chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)]),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for var in ("MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK"):
        env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_demo")
    generate_demo(root, num_images=int(DEMO["--data.demo_images"]), seed=0,
                  image_size=int(DEMO["--data.demo_image_size"]), progress=False)
    return root


def flags(options: dict[str, object]) -> list[str]:
    return [part for key, value in options.items() for part in (key, str(value))]


def train_args(demo: Path, runs: Path, *, config: str = "demo.yaml", devices: int = 2, **extra: object) -> list[str]:
    """train.py on the tiny demo with 2 CPU processes; ``extra`` options (``trainer__max_epochs=3`` style keys
    become ``--trainer.max_epochs 3``) are added last."""
    options = {"--config": REPO / "configs" / config, "--trainer.accelerator": "cpu",
               "--trainer.devices": devices, "--trainer.max_epochs": 2, "--trainer.precision": "32-true",
               "--trainer.enable_progress_bar": "false", "--trainer.enable_model_summary": "false",
               "--trainer.log_every_n_steps": 1, "--trainer.default_root_dir": runs,
               "--model.encoder": "resnet18", "--model.weights": "null", "--model.embed_size": 32,
               "--model.hidden_size": 32, "--model.test_beam_size": 2,
               "--data.root": demo, "--data.demo": "true", **DEMO, "--data.image_size": 48,
               "--data.batch_size": 8, "--data.num_workers": 0, "--data.min_count": 1, "--data.progress": "false",
               "--collective_timeout": TIMEOUT_S}
    if devices > 1:
        options["--trainer.strategy"] = "ddp"
    options.update({"--" + key.replace("__", "."): value for key, value in extra.items()})
    return [sys.executable, str(REPO / "train.py"), *flags(options)]


def start(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # Its own session, so that a timeout can kill the launcher and the processes it started, all at once.
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, limit: float = LIMIT_S) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the multi-process command did not end within {limit} s (a deadlock?); its output ends:\n"
                    f"{output[-3000:]}")
    return process.returncode, output


def run(command: list[str], env: dict[str, str], cwd: Path, limit: float = LIMIT_S) -> tuple[int, str]:
    return finish(start(command, env, cwd), limit)


def run_folder(output: str) -> Path:
    lines = [line for line in output.splitlines() if line.startswith("run folder: ")]
    assert len(lines) == 1, f"expected one 'run folder:' line (rank 0 prints it), got {lines}:\n{output[-3000:]}"
    return Path(lines[0].removeprefix("run folder: "))


def split_images(demo: Path, split: str = "test") -> list[str]:
    return sorted(load_corpus(demo, "auto", progress=False).splits[split])


def check_test_outputs(folder: Path, demo: Path) -> dict:
    """The run's test files: each test image exactly once, and the metrics."""
    records = [json.loads(line) for line in (folder / "test_captions.jsonl").read_text().splitlines()]
    assert sorted(r["image_id"] for r in records) == split_images(demo)  # 5 images: each once, none repeated
    metrics = json.loads((folder / "test_metrics.json").read_text())
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    assert metrics["meteor"] is None and metrics["bleu1"] is not None  # no Java here (the stand-in fails)
    return metrics


def test_the_demo_has_odd_splits_so_the_distributed_sampler_pads(demo):
    assert len(split_images(demo)) % 2 == 1 and len(split_images(demo, "val")) % 2 == 1


@pytest.mark.slow
def test_sigterm_ends_a_two_process_fit_and_last_resumes_it_to_the_test(demo, env, tmp_path):
    """Fit with 2 processes, SIGTERM to the launching process after the first epoch's checkpoint: the run ends
    (Lightning forwards the signal to the other process) with the resume command; ``--ckpt_path last`` then
    continues it to its last epoch and the test, whose files hold each test image once."""
    runs = tmp_path / "runs"
    process = start(train_args(demo, runs, trainer__max_epochs=400, trainer__logger__init_args__save_dir=runs),
                    env, tmp_path)
    last = runs / "demo" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + LIMIT_S
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert last.is_file(), "no checkpoint after the first epoch"
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    code, output = finish(process)
    assert code in (143, -signal.SIGKILL), output[-3000:]  # Lightning kills the launcher once a child exited 143
    assert "stopped by SIGTERM; resume with: python train.py" in output, output[-3000:]
    stopped_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
    assert stopped_at < 399

    code, output = run(train_args(demo, runs, trainer__max_epochs=stopped_at + 2, ckpt_path="last",
                                  trainer__logger__init_args__save_dir=runs), env, tmp_path)
    assert code == 0, output[-3000:]
    folder = run_folder(output)
    assert folder == runs / "demo" / "version_0"  # resumed into its own run folder
    check_test_outputs(folder, demo)
    summary = json.loads((folder / "fit_summary.json").read_text())
    assert summary["epochs"] == stopped_at + 2
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == stopped_at + 1
    assert output.count("showtell: kaggle data") == 1 and "2x cpu" in output  # start-up line printed once


@pytest.fixture(scope="module")
def no_logger_run(demo, env, tmp_path_factory) -> tuple[Path, str]:
    """Fit + test with 2 processes and no logger (outputs in default_root_dir)."""
    tmp = tmp_path_factory.mktemp("ddp_nologger")
    code, output = run(train_args(demo, tmp / "runs", trainer__logger="false"), env, tmp)
    assert code == 0, output[-3000:]
    return run_folder(output), output


@pytest.mark.slow
def test_two_process_fit_and_test_without_a_logger(no_logger_run, demo):
    folder, output = no_logger_run
    check_test_outputs(folder, demo)
    assert sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))[-1] == "last.ckpt"
    assert output.count("test metrics (5 images, beam 2)") == 1  # the table, once
    assert "Timed out" not in output and "Traceback" not in output


@pytest.mark.slow
def test_two_process_fit_and_test_of_the_paper_config_logging_to_wandb_offline(demo, env, tmp_path):
    """configs/flickr8k.yaml (wandb logger, sample captions table, early stopping, learning-rate monitor) shrunk
    to the demo, with 2 processes and wandb offline."""
    runs = tmp_path / "runs"
    code, output = run(train_args(demo, runs, config="flickr8k.yaml", trainer__logger__init_args__save_dir=runs,
                                  trainer__logger__init_args__offline="true", model__dropout=0.0), env, tmp_path)
    assert code == 0, output[-3000:]
    folder = run_folder(output)
    assert folder.parent == runs / "showtell"  # <save_dir>/<project>/<run id>, rank 0's id
    check_test_outputs(folder, demo)
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 1  # one wandb run, rank 0's
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert len([p for p in runs.glob("showtell/*") if p.is_dir()]) == 1  # other ranks made no run folder


@pytest.mark.slow
def test_evaluate_with_two_processes_equals_one_process_exactly(no_logger_run, env, tmp_path):
    """The padded duplicate image is dropped: BLEU, every metric and every caption equal the 1-process run's."""
    folder, _ = no_logger_run
    ckpt = folder / "checkpoints" / "last.ckpt"
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"eval{devices}"
        command = [sys.executable, "-m", "showtell.evaluate", "--ckpt", str(ckpt), "--split", "test", "--json",
                   "--output_dir", str(out), "--trainer.accelerator", "cpu", "--trainer.devices", str(devices),
                   "--data.progress", "false", "--collective_timeout", str(TIMEOUT_S)]
        if devices > 1:
            command += ["--trainer.strategy", "ddp"]
        code, output = run(command, env, tmp_path)
        assert code == 0, output[-3000:]
        printed = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert len(printed) == 1, output[-3000:]  # the metrics, printed by rank 0 only
        captions = (out / "test_captions.jsonl").read_text().splitlines()
        results[devices] = printed[0], captions, json.loads((out / "test_metrics.json").read_text())
    assert results[2][0] == results[1][0]  # exactly, not approximately
    assert results[2][1] == results[1][1] and len(results[1][1]) == 5
    assert results[2][2] == results[1][2]


@pytest.mark.slow
def test_one_self_critical_epoch_with_two_processes(no_logger_run, demo, env, tmp_path):
    folder, _ = no_logger_run
    runs = tmp_path / "runs"
    code, output = run(train_args(demo, runs, trainer__logger="false", trainer__max_epochs=1, model__scst="true",
                                  model__scst_samples=2, model__init_from=folder / "checkpoints" / "last.ckpt"),
                       env, tmp_path)
    assert code == 0, output[-3000:]
    check_test_outputs(run_folder(output), demo)
    assert output.count("init_from: weights of") == 1


@pytest.mark.slow
def test_a_collective_reached_by_rank_zero_only_ends_the_run_with_an_error_naming_the_stage(demo, env, tmp_path):
    """The bug behind the first deadlock (``trainer.log_dir`` on rank 0 only, at the end of the test epoch), put
    back by a test callback: with a 10 s collective timeout the run ends with one line per rank, not a hang."""
    runs = tmp_path / "runs"
    command = train_args(demo, runs, trainer__logger="false", trainer__max_epochs=1, collective_timeout=10)
    started = time.monotonic()
    code, output = run([*command, "--trainer.callbacks+=_ddp_helpers.RankZeroLogDir"], env, tmp_path, limit=120)
    assert code != 0
    assert "did not complete within --collective_timeout 10 s during test" in output, output[-3000:]
    assert time.monotonic() - started < 120


@pytest.mark.slow
def test_collective_timeout_must_be_positive(demo, env, tmp_path):
    code, output = run(train_args(demo, tmp_path / "runs", devices=1, collective_timeout=0), env, tmp_path, limit=60)
    assert code == 2 and "error: --collective_timeout must be a positive number of seconds, got 0.0" in output


def _build_cache(args: tuple) -> list[str]:
    from showtell.data.features import cached_features

    cache_file, names, start_at = args
    while time.time() < start_at:  # both processes compute and write at the same moment
        time.sleep(0.001)

    def compute():
        time.sleep(0.3)
        return torch.arange(len(names) * 4, dtype=torch.float16).reshape(len(names), 4).numpy()

    return cached_features(Path(cache_file), names, compute).names


@pytest.mark.slow
def test_two_processes_building_the_same_feature_cache_at_once_leave_one_valid_file(tmp_path):
    """As two nodes' local rank 0 (or two runs) on a shared disk: each writes a private temporary file and renames
    it into place, so the cache is always one complete file, and both processes get its rows."""
    import multiprocessing

    from showtell.data.features import load_features

    cache_file = tmp_path / "cache" / "features.npz"
    names = [f"img{i}.jpg" for i in range(50)]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_build_cache, [(str(cache_file), names, time.time() + 3.0)] * 2)
    assert results == [names, names]
    assert sorted(p.name for p in cache_file.parent.iterdir()) == ["features.npz"]  # no temporary file left
    table = load_features(cache_file)
    assert table.names == names and table.array.shape == (50, 4)

"""CorpusBLEU under DDP on CPU (gloo, 2 processes): padded duplicate samples must not be counted.

7 samples on 2 processes: DistributedSampler pads to 8 by repeating sample 0. The first test drives
CorpusBLEU by hand in two plain processes; the second runs the real thing, ``Trainer(strategy="ddp",
devices=2).validate``, in a subprocess. Both compare with single-process corpus_bleu on the 7 samples.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from showtell.metrics.bleu import corpus_bleu

WORKER = Path(__file__).resolve().parents[1] / "_ddp_bleu_worker.py"
REPO = Path(__file__).resolve().parents[2]


def load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_bleu_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLES = load_worker().SAMPLES


def one_process_bleu(order: list[int]) -> dict[str, float]:
    return corpus_bleu([SAMPLES[i][0] for i in order], [SAMPLES[i][1] for i in order])


def run_ranks(commands: list[list[str]], timeout: float) -> list[subprocess.CompletedProcess]:
    """Start all ranks at once, wait for all; kill every one on timeout so nothing hangs."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c in commands]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
            p.communicate()
        pytest.fail(f"DDP processes did not finish within {timeout} s")
    return [subprocess.CompletedProcess(c, p.returncode, o) for c, p, o in zip(commands, processes, outputs)]


@pytest.mark.slow
def test_corpus_bleu_metric_deduplicates_padded_samples_across_two_processes(tmp_path):
    world_size = 2
    rendezvous = tmp_path / "rendezvous"  # a file store: no TCP port to pick or collide on
    outputs = [tmp_path / f"rank{r}.json" for r in range(world_size)]
    commands = [[sys.executable, str(WORKER), str(r), str(world_size), str(rendezvous), str(outputs[r])]
                for r in range(world_size)]
    for finished in run_ranks(commands, timeout=90):
        assert finished.returncode == 0, finished.stdout[-3000:]
    results = [json.loads(o.read_text()) for o in outputs]

    seen = [i for r in results for i in r["indices"]]
    assert sorted(seen) == [0, 0, 1, 2, 3, 4, 5, 6], "the sampler pads 7 samples to 8 by repeating one"
    expected = one_process_bleu(list(range(7)))
    with_duplicate = one_process_bleu(seen)
    assert abs(with_duplicate["bleu4"] - expected["bleu4"]) > 0.005, "the duplicate must change BLEU"
    for r in results:
        assert r["deduplicated"] == pytest.approx(expected, abs=1e-12), r
        assert r["without_indices"] == pytest.approx(with_duplicate, abs=1e-12), r
        assert r["only_rank0_has_samples"] == pytest.approx(expected, abs=1e-12), r
    print(f"\n1 process: {expected}\n2 processes, de-duplicated: {results[0]['deduplicated']}"
          f"\n2 processes, without indices: {results[0]['without_indices']}")


LIGHTNING_SCRIPT = '''
import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from showtell.metrics import CorpusBLEU

SAMPLES = json.loads(Path(sys.argv[1]).read_text())
OUT = Path(sys.argv[2])


class Captions(Dataset):
    def __len__(self):
        return len(SAMPLES)

    def __getitem__(self, index):
        hypothesis, references = SAMPLES[index]
        return hypothesis, references, index


def collate(items):
    hypotheses, references, indices = zip(*items)
    return list(hypotheses), list(references), torch.tensor(indices)


class Module(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.bleu = CorpusBLEU()
        self.bleu_without_indices = CorpusBLEU()
        self.seen = []

    def validation_step(self, batch, batch_idx):
        hypotheses, references, indices = batch
        self.bleu.update(hypotheses, references, indices)
        self.bleu_without_indices.update(hypotheses, references)
        self.seen += indices.tolist()

    def on_validation_epoch_end(self):
        scores = self.bleu.compute()
        plain = self.bleu_without_indices.compute()
        self.log_dict({f"val/{k}": v.float() for k, v in scores.items()})
        self.computed = {"deduplicated": {k: v.item() for k, v in scores.items()},
                         "without_indices": {k: v.item() for k, v in plain.items()}}
        self.bleu.reset()
        self.bleu_without_indices.reset()


if __name__ == "__main__":
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=OUT)
    model = Module()
    logged = trainer.validate(model, DataLoader(Captions(), batch_size=2, collate_fn=collate))
    result = {"rank": trainer.global_rank, "seen": model.seen, "logged": logged[0], **model.computed}
    (OUT / f"rank{trainer.global_rank}.json").write_text(json.dumps(result))
'''


@pytest.mark.slow
def test_lightning_ddp_validate_counts_each_sample_once(tmp_path):
    pytest.importorskip("lightning")
    script = tmp_path / "validate_ddp.py"
    script.write_text(textwrap.dedent(LIGHTNING_SCRIPT))
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps(SAMPLES))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    env.pop("MASTER_PORT", None)  # Lightning picks a free port
    try:
        command = [sys.executable, str(script), str(samples), str(tmp_path)]
        finished = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"Lightning DDP validate did not finish in 120 s:\n{str(err.stdout)[-2000:]}")
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-4000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    seen = sorted(results[0]["seen"] + results[1]["seen"])
    assert seen == [0, 0, 1, 2, 3, 4, 5, 6], "Lightning's sampler pads 7 samples to 8 by repeating one"
    expected = one_process_bleu(list(range(7)))
    with_duplicate = one_process_bleu(seen)
    for r in results:
        assert r["deduplicated"] == pytest.approx(expected, abs=1e-12), r
        assert r["without_indices"] == pytest.approx(with_duplicate, abs=1e-12), r
        assert r["without_indices"]["bleu4"] != pytest.approx(expected["bleu4"], abs=1e-3)
        assert r["logged"]["val/bleu4"] == pytest.approx(expected["bleu4"], abs=1e-6), r["logged"]
    print(f"\nLightning 2 processes: de-duplicated {results[0]['deduplicated']}, "
          f"without indices {results[0]['without_indices']}")

"""ShowTellModule: loss, frozen encoder through fit, overfitting, evaluation outputs, checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import lightning as L
import pytest
import torch
from conftest import REPO, tiny_data_kwargs, tiny_model_kwargs

from showtell.data.datamodule import Flickr8kDataModule
from showtell.data.dataset import Batch
from showtell.training.module import ShowTellModule
from showtell.vocab import END_ID, PAD_ID, START_ID, Vocabulary


def _trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=str(tmp_path), num_sanity_val_steps=0,
                    enable_checkpointing=False)
    return L.Trainer(**(defaults | kw))


def test_forward_shapes_and_pad_masked_loss():
    torch.manual_seed(0)
    model = ShowTellModule(vocab_size=20, feature_dim=8, embed_size=8, hidden_size=8, dropout=0.0)
    captions = torch.tensor([[START_ID, 5, 6, END_ID, PAD_ID], [START_ID, 7, END_ID, PAD_ID, PAD_ID]])
    feats = torch.randn(2, 8)
    assert model(feats, captions).shape == (2, 4, 20)  # (B, T-1, V)
    batch = Batch(feats, captions, torch.tensor([4, 3]), [[], []], ["a", "b"], torch.arange(2))
    longer = Batch(feats, torch.cat([captions, torch.zeros(2, 3, dtype=torch.long)], 1), *batch[2:])
    # extra padding changes nothing: the loss covers real tokens only
    torch.testing.assert_close(model._loss(batch), model._loss(longer))
    logits = model(feats, captions)
    manual = torch.nn.functional.cross_entropy(
        torch.cat([logits[0, :3], logits[1, :2]]), torch.tensor([5, 6, END_ID, 7, END_ID]))
    torch.testing.assert_close(model._loss(batch), manual)


def test_frozen_encoder_gets_no_gradients_and_stays_in_eval_mode(demo_root, tmp_path):
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_features=False)  # images through the CNN
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs())
    before = {k: v.clone() for k, v in model.encoder.backbone.state_dict().items()}
    embed_before = model.encoder.embed.weight.detach().clone()
    trainer = _trainer(tmp_path, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    backbone = model.encoder.backbone
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert not any(m.training for m in backbone.modules())
    for key, value in backbone.state_dict().items():  # weights and BatchNorm running stats untouched
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.encoder.embed.weight, embed_before)  # the image embedding does train
    trainable, frozen = model.parameter_counts()
    assert frozen == sum(p.numel() for p in backbone.parameters()) and trainable > 0
    optimizer_params = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimizer_params == {id(p) for p in model.parameters() if p.requires_grad}


def test_tiny_model_overfits_eight_pairs_to_exact_captions():
    torch.manual_seed(0)
    vocab = Vocabulary.build(["a red ball on the grass two dogs play in snow man rides bike down road"], min_count=1)
    captions = ["a red ball on the grass", "two dogs play in the snow", "a man rides a bike",
                "dogs play on the road", "a man in the snow", "two red bike", "the ball rides down",
                "a dog"]
    encoded = [vocab.encode(c) for c in captions]
    T = max(map(len, encoded))
    ids = torch.tensor([e + [PAD_ID] * (T - len(e)) for e in encoded])
    feats = torch.randn(8, 16)
    model = ShowTellModule(vocab_size=len(vocab), feature_dim=16, embed_size=32, hidden_size=64, dropout=0.0)
    model.vocab = vocab
    batch = Batch(feats, ids, torch.tensor([len(e) for e in encoded]), [[]] * 8, [""] * 8, torch.arange(8))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        loss = model._loss(batch)
        loss.backward()
        opt.step()
    model.eval()
    greedy = model.captions_from(model.generate(feats, beam_size=1))
    assert [" ".join(g) for g in greedy] == [" ".join(vocab.decode(e)) for e in encoded], float(loss)
    beam = model.captions_from(model.generate(feats, beam_size=3))
    assert beam == greedy


@pytest.mark.slow
def test_validation_and_test_decode_free_running_and_write_outputs(demo_root, tmp_path):
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_dir=str(tmp_path / "cache"))
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs())
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=data)
    logged = trainer.callback_metrics
    for key in ("val/bleu1", "val/bleu4", "val/loss", "val/perplexity", "train/loss_epoch"):
        assert key in logged, key
    assert model.val_samples and {"image_id", "caption", "references"} <= set(model.val_samples[0])
    trainer.test(model, datamodule=data, verbose=False)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert set(metrics) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider"}
    assert 0 <= metrics["bleu1"] <= 1
    lines = (tmp_path / "test_captions.jsonl").read_text().splitlines()
    assert len(lines) == len(data.corpus.splits["test"])
    record = json.loads(lines[0])
    assert set(record) == {"image_id", "caption", "references"} and len(record["references"]) == 5
    assert abs(metrics["bleu4"] - float(trainer.callback_metrics["test/bleu4"])) < 1e-6


@pytest.mark.slow
def test_checkpoint_is_self_contained_in_a_fresh_process(tiny_checkpoint, demo_root, tmp_path):
    model = ShowTellModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu").eval()
    assert model.vocab is not None and len(model.vocab) == model.hparams.vocab_size
    torch.manual_seed(1)
    images = torch.randn(3, 3, 64, 64)
    torch.save(images, tmp_path / "images.pt")
    expected = model.captions_from(model.generate(images, beam_size=2))
    script = (
        "import sys, json, torch\n"
        "from showtell.training import ShowTellModule\n"
        f"m = ShowTellModule.load_from_checkpoint({str(tiny_checkpoint)!r}, map_location='cpu').eval()\n"
        f"images = torch.load({str(tmp_path / 'images.pt')!r})\n"
        "print(json.dumps(m.captions_from(m.generate(images, beam_size=2))))\n")
    # a fresh process, with no dataset around and no network: weights come from the checkpoint only
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                           "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


def test_vocabulary_mismatch_is_refused(tiny_checkpoint, demo_root, tmp_path):
    model = ShowTellModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu")
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root) | {"min_count": 40})
    with pytest.raises(ValueError, match="vocabulary"):
        _trainer(tmp_path).test(model, datamodule=data, verbose=False)


def test_vocab_size_must_be_linked():
    with pytest.raises(ValueError, match="linked from the data module"):
        ShowTellModule()


def test_sgd_with_step_decay(demo_root):
    model = ShowTellModule(vocab_size=30, feature_dim=4, optimizer="sgd", lr=2.0, lr_step_epochs=8, lr_decay=0.5)
    config = model.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    sched = config["lr_scheduler"]["scheduler"]
    assert sched.step_size == 8 and sched.gamma == 0.5


def test_finetune_after_unfreezes_the_cnn_with_its_own_learning_rate(demo_root, tmp_path):
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), frozen_encoder=False)  # images, not cached features
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs(), finetune_after=1, finetune_lr=1e-4)
    before = model.encoder.backbone.conv1.weight.detach().clone()
    trainer = _trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    assert not model.encoder.frozen
    assert not torch.equal(model.encoder.backbone.conv1.weight, before)
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["lr"] == 1e-4


@pytest.mark.parametrize("conditioning", ["pre", "init", "par", "merge"])
def test_real_token_logits_give_the_padded_masked_loss_and_gradients(conditioning):
    """Logits only at real positions == full logits with pads ignored: same loss, same gradients."""
    torch.manual_seed(0)
    model = ShowTellModule(vocab_size=30, feature_dim=8, embed_size=8, hidden_size=8, dropout=0.0,
                           conditioning=conditioning)
    lengths = torch.tensor([7, 3, 5, 4])
    captions = torch.full((4, 7), PAD_ID)
    for row, n in enumerate(lengths.tolist()):
        captions[row, :n] = torch.randint(4, 30, (n,))
        captions[row, 0], captions[row, n - 1] = START_ID, END_ID
    batch = Batch(torch.randn(4, 8), captions, lengths, [[]] * 4, list("abcd"), torch.arange(4))

    model.zero_grad()
    loss = model._loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    full = model(batch.images, batch.captions)  # (B, T-1, V): pads included
    reference = torch.nn.functional.cross_entropy(full.flatten(0, 1), captions[:, 1:].flatten(),
                                                  ignore_index=PAD_ID)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    assert grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, msg=name)

"""Self-critical sequence training: sampler, loss, rewards, init_from, per-image batches, a short demo run."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_data_kwargs, tiny_model_kwargs
from torch import Tensor

import showtell.training.scst as scst_file
from showtell.data.datamodule import Flickr8kDataModule
from showtell.data.dataset import Batch
from showtell.errors import CheckpointError, OptionError
from showtell.model.decoding import greedy_decode, sample_captions
from showtell.training.module import ShowTellModule
from showtell.training.scst import self_critical_loss
from showtell.vocab import END_ID, PAD_ID, START_ID, Vocabulary

WORDS = ["a", "red", "blue", "circle", "square", "small", "large", "on", "the", "left"]


def _toy_model(**kwargs) -> ShowTellModule:
    """A tiny model on 8-d features with a 14-word vocabulary, in eval mode (no dropout)."""
    torch.manual_seed(0)
    options = dict(vocab_size=4 + len(WORDS), feature_dim=8, embed_size=16, hidden_size=16, dropout=0.0,
                   max_caption_len=6, scst=True, scst_samples=4) | kwargs
    model = ShowTellModule(**options)
    model.vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *WORDS])
    return model.eval()


def _toy_batch(num_images: int = 3) -> Batch:
    images = torch.randn(num_images, 8, generator=torch.Generator().manual_seed(1))
    captions = torch.tensor([[START_ID, 4, END_ID]] * num_images)
    refs = [[["a", "red", "circle"], ["a", "small", "red", "circle", "on", "the", "left"]]] * num_images
    return Batch(images, captions, torch.full((num_images,), 3), refs, [f"{i}.jpg" for i in range(num_images)],
                 torch.arange(num_images))


def _teacher_forced_log_probs(model: ShowTellModule, images: Tensor, tokens: Tensor, lengths: Tensor,
                              finished: Tensor) -> Tensor:
    """Sum of log p of each caption's words (and <end> if finished) under teacher forcing: (N,)."""
    N, L_ = tokens.shape
    captions = torch.full((N, L_ + 2), PAD_ID, dtype=torch.long)
    captions[:, 0] = START_ID
    captions[:, 1:-1] = tokens
    captions[torch.arange(N), lengths + 1] = torch.where(finished, END_ID, PAD_ID)
    targets = captions[:, 1:]  # (N, L + 1)
    logp = torch.log_softmax(model(images, captions).float(), dim=-1).gather(2, targets.unsqueeze(-1)).squeeze(-1)
    scored = torch.arange(L_ + 1) < (lengths + finished.long()).unsqueeze(1)  # words, then <end> if finished
    return (logp * scored).sum(dim=1)


# ----- sampler -----------------------------------------------------------------------------------------------


def test_sampler_log_probs_equal_teacher_forced_and_stop_after_end():
    model = _toy_model()
    images = torch.randn(5, 8)
    torch.manual_seed(3)
    samples = sample_captions(model.decoder, model.embed_images(images), num_samples=6, max_len=6)
    B, K, L_ = samples.tokens.shape
    assert (B, K, L_) == (5, 6, 6) and samples.log_probs.shape == (5, 6) and samples.log_probs.requires_grad
    tokens = samples.tokens.flatten(0, 1)
    lengths, finished = samples.lengths.flatten(), samples.finished.flatten()
    assert finished.any() and (~finished).any()  # both kinds are checked
    positions = torch.arange(L_).unsqueeze(0)
    # words up to the length, <pad> after; <end>, <pad> and <start> are never words
    assert ((tokens != PAD_ID) == (positions < lengths.unsqueeze(1))).all()
    assert not torch.isin(tokens, torch.tensor([END_ID, START_ID])).any()
    assert (lengths[~finished] == L_).all()  # unfinished only when max_len words came without <end>
    expected = _teacher_forced_log_probs(model, images.repeat_interleave(K, 0), tokens, lengths, finished)
    torch.testing.assert_close(samples.log_probs.flatten(), expected, rtol=1e-5, atol=1e-5)


def test_sampler_draws_from_the_softmax_and_max_len_zero():
    model = _toy_model()
    embeds = model.embed_images(torch.randn(1, 8))
    with torch.no_grad():
        first = torch.softmax(model.decoder.step(torch.tensor([START_ID]), model.decoder.init_state(embeds))[0], -1)[0]
        torch.manual_seed(0)
        samples = sample_captions(model.decoder, embeds, num_samples=4000, max_len=0)
    # the first token's frequencies follow the softmax over the tokens that may be drawn
    allowed = first.clone()
    allowed[[PAD_ID, START_ID]] = 0
    assert samples.tokens.shape == (1, 4000, 0) and (samples.lengths == 0).all()
    ended = samples.finished.float().mean().item()  # with max_len 0 a sample is finished iff it drew <end>
    assert abs(ended - float(allowed[END_ID] / allowed.sum())) < 0.03


# ----- loss --------------------------------------------------------------------------------------------------


def test_identical_samples_have_zero_advantage_and_loss():
    log_probs = torch.randn(3, 5, requires_grad=True)
    loss, advantages = self_critical_loss(log_probs, torch.full((3, 5), 0.7))
    assert (advantages == 0).all() and loss.item() == 0
    loss.backward()
    assert (log_probs.grad == 0).all()
    # the module's step: a model that always says <end> at once samples K identical (empty) captions
    model = _toy_model()
    with torch.no_grad():
        model.decoder.output.bias[END_ID] = 100.0
    model.use_training_reward(lambda hypotheses, images: np.array([len(h) + 0.5 for h in hypotheses], dtype=float))
    loss, stats = model._scst_loss(_toy_batch())
    assert loss.item() == 0 and stats["advantage_abs"].item() == 0 and stats["reward"].item() == 0.5


def test_mean_baseline_is_the_mean_of_the_other_samples():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    log_probs = torch.zeros(1, 4, requires_grad=True)
    loss, advantages = self_critical_loss(log_probs, rewards)
    torch.testing.assert_close(advantages, torch.tensor([[1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0]]))
    loss.backward()
    torch.testing.assert_close(log_probs.grad, -advantages / 4)  # d loss / d log p = -advantage / (B K)
    greedy = torch.tensor([[2.0]])
    torch.testing.assert_close(self_critical_loss(log_probs, rewards, greedy)[1], rewards - 2.0)


@pytest.mark.parametrize("baseline", ["mean", "greedy"])
def test_one_step_makes_samples_above_the_baseline_more_likely(baseline, monkeypatch):
    """Reward = number of distinct words: after one SGD step the samples above the baseline gain probability,
    those below lose it, on average (checked on the very samples the step drew, by teacher forcing)."""
    model = _toy_model(optimizer="sgd", lr=0.1, scst_baseline=baseline)
    model.use_training_reward(lambda hypotheses, images: np.array([float(len(set(h))) for h in hypotheses]))
    drawn = []

    def recording(*args, **kwargs):
        drawn.append(sample_captions(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(scst_file, "sample_captions", recording)
    batch = _toy_batch()
    torch.manual_seed(5)
    loss, stats = model._scst_loss(batch)
    samples = drawn[0]
    K = model.hparams.scst_samples
    images = batch.images.repeat_interleave(K, 0)
    args = samples.tokens.flatten(0, 1), samples.lengths.flatten(), samples.finished.flatten()
    before = _teacher_forced_log_probs(model, images, *args).detach()
    distinct = [len(set(row[row != PAD_ID].tolist())) for row in samples.tokens.flatten(0, 1)]
    rewards = torch.tensor(distinct, dtype=torch.float32).view(-1, K)
    if baseline == "greedy":
        greedy = greedy_decode(model.decoder, model.embed_images(batch.images), model.hparams.max_caption_len).best
        greedy_rewards = torch.tensor([float(len(set(row[row != PAD_ID].tolist()))) for row in greedy])
        torch.testing.assert_close(stats["greedy_reward"], greedy_rewards.mean())
        advantages = (rewards - greedy_rewards.unsqueeze(1)).flatten()
    else:
        advantages = (rewards - (rewards.sum(1, keepdim=True) - rewards) / (K - 1)).flatten()
    torch.testing.assert_close(stats["advantage_abs"], advantages.abs().mean())
    torch.testing.assert_close(stats["reward"], rewards.mean())
    optimizer = model.configure_optimizers()
    loss.backward()
    optimizer.step()
    change = _teacher_forced_log_probs(model, images, *args).detach() - before
    assert (advantages > 0).any() and (advantages < 0).any()
    assert change[advantages > 0].mean() > 0 > change[advantages < 0].mean()
    assert (advantages * change).sum() > 0  # first order: lr x |gradient|^2


# ----- options and init_from ---------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(scst_samples=1), "--model.scst_samples must be >= 2 with --model.scst_baseline mean"),
    (dict(scst_samples=0, scst_baseline="greedy"), "--model.scst_samples must be a positive integer"),
    (dict(scst_baseline="max"), "--model.scst_baseline must be one of mean, greedy"),
    (dict(scst="yes"), "--model.scst must be true or false"),
    (dict(init_from="/nonexistent/model.ckpt"), "--model.init_from /nonexistent/model.ckpt: no such file"),
])
def test_bad_scst_options_fail_when_the_model_is_built(options, message):
    with pytest.raises(OptionError) as err:
        ShowTellModule(vocab_size=20, feature_dim=8, **options)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    ShowTellModule(vocab_size=20, feature_dim=8, scst_samples=1, scst_baseline="greedy")  # allowed


def _fit_setup_only(model: ShowTellModule, data, tmp_path) -> None:
    """Run fit's setup (which loads init_from) without a training step."""
    _trainer(tmp_path, max_epochs=0).fit(model, datamodule=data)


def test_init_from_loads_the_weights_exactly_and_checks_the_vocabulary(demo_root, tiny_checkpoint, tmp_path):
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_dir=str(tmp_path / "cache"))
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs(), init_from=str(tiny_checkpoint))
    _fit_setup_only(model, data, tmp_path)
    stored = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    state = model.state_dict()
    assert set(state) == set(stored)
    for key, value in stored.items():
        assert torch.equal(state[key], value), key
    # another vocabulary (a higher min_count drops words): one line naming both sizes and what to do
    other = Flickr8kDataModule(**(tiny_data_kwargs(demo_root) | dict(min_count=30)), cache_dir=str(tmp_path / "c"))
    assert 4 < other.vocab_size < data.vocab_size
    model = ShowTellModule(vocab_size=other.vocab_size, **tiny_model_kwargs(), init_from=str(tiny_checkpoint))
    with pytest.raises(OptionError) as err:
        _fit_setup_only(model, other, tmp_path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"--model.init_from {tiny_checkpoint}: its vocabulary has "
                                                f"{data.vocab_size} words, the data's has {other.vocab_size}")
    assert "--data.min_count" in line
    # same size, other words
    other._vocab = Vocabulary([*data.vocab.itos[:4], *reversed(data.vocab.itos[4:])])
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs(), init_from=str(tiny_checkpoint))
    with pytest.raises(OptionError, match="has as many words as the data's .* but other ones"):
        _fit_setup_only(model, other, tmp_path)
    # other model sizes, or not a checkpoint: one line too
    model = ShowTellModule(vocab_size=data.vocab_size, **(tiny_model_kwargs() | dict(hidden_size=16)),
                           init_from=str(tiny_checkpoint))
    with pytest.raises(OptionError, match="its weights do not fit this model .*size mismatch"):
        _fit_setup_only(model, data, tmp_path)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    model = ShowTellModule(vocab_size=data.vocab_size, **tiny_model_kwargs(), init_from=str(tmp_path / "junk.ckpt"))
    with pytest.raises(CheckpointError, match="is not a readable PyTorch checkpoint"):
        _fit_setup_only(model, data, tmp_path)


# ----- data --------------------------------------------------------------------------------------------------


def test_per_image_training_batches_carry_each_training_image_once_per_epoch(demo_root, tmp_path):
    data = Flickr8kDataModule(**tiny_data_kwargs(demo_root), cache_dir=str(tmp_path / "cache"), train_per_image=True,
                              shuffle_seed=0)
    data.setup("fit")
    train = data.datasets["train"]
    names = data.corpus.splits["train"]
    assert len(train) == len(names) == len(set(names))
    orders = []
    for epoch in range(2):
        sampler = data.train_sampler()
        sampler.set_epoch(epoch)
        seen = []
        for indices in sampler:
            batch = train[indices]
            seen += batch.indices.tolist()
            for i, image_id, refs in zip(batch.indices.tolist(), batch.image_ids, batch.references):
                assert image_id == names[i] and refs == train.references[i]
                assert len(refs) == len(data.corpus.captions[image_id]) == 5  # all its references
        assert sorted(seen) == list(range(len(names)))  # each image exactly once
        orders.append(seen)
    assert orders[0] != orders[1]  # reshuffled every epoch


# ----- end to end --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_240(tmp_path_factory):
    """A demo of 240 small images (30 validation images: the 6 of ``demo_root`` make val CIDEr-D too noisy to
    compare) and a cross-entropy checkpoint trained on it for a few epochs."""
    from showtell.data.synthetic import generate_demo

    root = tmp_path_factory.mktemp("shapes_240")
    generate_demo(root, num_images=240, seed=0, image_size=32, progress=False)
    data_kwargs = tiny_data_kwargs(root) | dict(image_size=32, cache_dir=str(root / "cache"))
    model_kwargs = tiny_model_kwargs() | dict(feature_norm=True)
    L.seed_everything(0)
    data = Flickr8kDataModule(**(data_kwargs | dict(batch_size=64)))
    model = ShowTellModule(vocab_size=data.vocab_size, **model_kwargs)
    trainer = _trainer(root, max_epochs=15, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    trainer.save_checkpoint(root / "ce.ckpt")
    return data_kwargs, model_kwargs, root / "ce.ckpt"


def _trainer(folder, **kwargs) -> L.Trainer:
    return L.Trainer(**(dict(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(folder),
                             num_sanity_val_steps=0) | kwargs))


@pytest.mark.slow
def test_short_scst_run_from_a_cross_entropy_checkpoint_raises_val_cider(shapes_240, tmp_path):
    data_kwargs, model_kwargs, ce_checkpoint = shapes_240
    checkpoint = tmp_path / "ce.ckpt"
    checkpoint.write_bytes(ce_checkpoint.read_bytes())  # removed below: SCST checkpoints load without it
    data = Flickr8kDataModule(**(data_kwargs | dict(batch_size=32)), train_per_image=True)
    before = _trainer(tmp_path).validate(ShowTellModule.load_from_checkpoint(checkpoint), datamodule=data,
                                         verbose=False)[0]
    L.seed_everything(0)
    model = ShowTellModule(vocab_size=data.vocab_size, **(model_kwargs | dict(lr=1e-3)), init_from=str(checkpoint),
                           scst=True)
    trainer = _trainer(tmp_path, max_epochs=6, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    rewards = trainer.callback_metrics
    assert {"train/reward_epoch", "train/advantage_abs_epoch", "train/loss_epoch"} <= set(rewards)
    assert "train/perplexity" not in rewards  # the SCST loss is no cross-entropy
    after = _trainer(tmp_path).validate(model, datamodule=data, verbose=False)[0]
    assert after["val/cider"] > 1.3 * before["val/cider"], (before, after)
    trainer.save_checkpoint(tmp_path / "scst.ckpt")
    checkpoint.unlink()
    loaded = ShowTellModule.load_from_checkpoint(tmp_path / "scst.ckpt")
    assert loaded.hparams.scst and loaded.hparams.init_from == str(checkpoint)
    assert torch.equal(loaded.decoder.output.weight, model.decoder.output.weight)


# ----- command line ------------------------------------------------------------------------------------------


def test_cli_links_scst_to_per_image_batches_and_reports_a_wrong_vocabulary_in_one_line(
        demo_root, tiny_checkpoint, tmp_path, capsys):
    from conftest import REPO

    from showtell.train import main
    from showtell.training.cli import ShowTellCLI

    args = ["--config", str(REPO / "configs" / "demo.yaml"), "--data.root", str(demo_root), "--data.demo", "false",
            "--data.image_size", "64", "--data.cache_dir", str(tmp_path / "cache"), "--data.num_workers", "0",
            "--data.progress", "false", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    assert not ShowTellCLI(args=args).datamodule.hparams.train_per_image
    assert ShowTellCLI(args=[*args, "--model.scst", "true"]).datamodule.hparams.train_per_image
    with pytest.raises(SystemExit) as exit_:  # tiny_checkpoint was trained with min_count 1
        main([*args, "--model.scst", "true", "--model.init_from", str(tiny_checkpoint), "--data.min_count", "30"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err  # above the error line: only warnings of the CLIs built before
    assert err.strip().splitlines()[-1].startswith(f"error: --model.init_from {tiny_checkpoint}: its vocabulary has ")

"""ShowTellModule: the LightningModule around ``ImageEncoder`` -> ``CaptionDecoder``.

Training is teacher-forced cross-entropy over real tokens (padding masked), or, with ``scst``, self-critical
sequence training on batches of training images (``showtell.training.scst``). ``init_from`` starts from the
weights of a cross-entropy checkpoint (the usual way to run SCST). Validation and test decode free-running
(never teacher-forced), greedy or beam search through ``showtell.model.decoding``, and score corpus BLEU-1..4
against all references with coco-caption's exact formula (``showtell.metrics``), de-duplicated across DDP
processes, and validation CIDEr-D. ``test_step`` returns one record per image; the ``TestOutputWriter``
callback the module brings (``showtell.training.outputs``) scores them with every metric and writes the
captions (JSONL) and metrics (JSON) to the run folder.

What the model needs from the data when fitting (the training references for SCST; the features file and its
images for the attached encoder's check) comes in one object, ``CaptionDataModule.fit_data()``.

Checkpoints are self-contained: hyperparameters (encoder spec included), weights and the vocabulary (plain
JSON data) are inside, so ``ShowTellModule.load_from_checkpoint(path)`` works in a fresh process without
the dataset and without downloading pretrained weights.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from showtell.data.dataset import Batch
from showtell.errors import OptionError
from showtell.metrics.bleu import CorpusBLEU
from showtell.metrics.cider import cider_d
from showtell.model.backbones import check_encoder_options
from showtell.model.decoder import CaptionDecoder, Conditioning
from showtell.model.decoding import Decoded, decode
from showtell.model.encoder import ImageEncoder
from showtell.options import Options, checked_results
from showtell.training.attach import check_attached_encoder
from showtell.training.checkpoints import load_weights, rng_states, set_rng_states
from showtell.training.outputs import TestOutputWriter, gather_records
from showtell.training.scst import ScstBaseline, SelfCritical, training_reward
from showtell.vocab import PAD_ID, Vocabulary


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: one line with epoch, step and what to try."""


# Set while load_from_checkpoint builds the module: the checkpoint's state dict brings the CNN weights,
# so constructing the encoder must not try to download the pretrained ones.
_LOADING_CHECKPOINT = contextvars.ContextVar("showtell_loading_checkpoint", default=False)


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Build modules whose weights come from a checkpoint next: no pretrained download, no ``init_from``."""
    token = _LOADING_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _LOADING_CHECKPOINT.reset(token)

Optimizer = Literal["adam", "sgd"]


class ShowTellModule(L.LightningModule):
    """Show and Tell captioner.

    Args:
        vocab_size: linked from the data module (``data.vocab_size``); never set by hand.
        feature_dim: linked from the data module: the size of bring-your-own features (then no CNN is built,
            unless ``attach_encoder``).
        encoder: torchvision backbone name (``showtell.model.backbones.BACKBONES``) or ``timm/<model>`` (timm extra).
        weights: torchvision weights name (``DEFAULT`` = ImageNet; timm: its pretrained download), ``null``
            (random init) or a local state-dict file.
        attach_encoder: with bring-your-own features, build the declared (frozen) encoder into the model too,
            so the checkpoint captions images; training still reads the features file. At fit setup the
            encoder must reproduce the file's rows on up to 16 of the dataset's images (``showtell.training.attach``).
        feature_norm: BatchNorm on the pooled CNN features before the image embedding (not in the paper;
            helps a random, untrained CNN as in the offline demo).
        embed_size, hidden_size, num_layers, dropout: decoder sizes (paper / im2txt: 512, 512, 1, 0.3).
        conditioning: where the image enters the LSTM: ``pre`` (paper: once at t=-1), ``init``, ``par``, ``merge``.
        uniform_init: uniform(-a, a) init of the decoder (im2txt 0.08); null keeps PyTorch's defaults.
        optimizer, lr, weight_decay, momentum: Adam (default) or SGD (im2txt: SGD lr 2.0, clip 5 via the
            Trainer's ``gradient_clip_val``).
        lr_step_epochs, lr_decay: multiply the learning rate by ``lr_decay`` every ``lr_step_epochs`` epochs.
        finetune_after: unfreeze the CNN after this many epochs (the paper's follow-up), at ``finetune_lr``.
        val_beam_size, test_beam_size: decoding at validation / test (1 = greedy).
        max_caption_len: longest generated caption, in words.
        length_penalty: rank beams by logprob / length**alpha (0 = im2txt, no normalisation).
        log_samples: generated captions kept per validation epoch for the logger's sample table.
        init_from: a checkpoint written by train.py whose weights (only: not its optimizer or epoch) this
            model starts from when fitting; its vocabulary must equal the data's.
        scst: self-critical sequence training instead of cross-entropy (batches of images: the CLI links
            ``data.train_per_image``); typically after a cross-entropy run, with ``init_from``.
        scst_samples: captions sampled per image and step (K; Luo 2020: 5).
        scst_baseline: ``mean`` of the image's other K-1 sample rewards (Luo 2020, no extra decoding) or the
            reward of its ``greedy`` caption (Rennie et al. 2017).
    """

    def __init__(self, vocab_size: int = 0, feature_dim: int | None = None, encoder: str = "resnet50",
                 weights: str | None = "DEFAULT", attach_encoder: bool = False, feature_norm: bool = False,
                 embed_size: int = 512,
                 hidden_size: int = 512,
                 num_layers: int = 1, dropout: float = 0.3,
                 conditioning: Conditioning = "pre", uniform_init: float | None = 0.08,
                 optimizer: Optimizer = "adam", lr: float = 4e-4, weight_decay: float = 0.0,
                 momentum: float = 0.0, lr_step_epochs: int | None = None, lr_decay: float = 0.5,
                 finetune_after: int | None = None, finetune_lr: float = 5e-4, val_beam_size: int = 1,
                 test_beam_size: int = 3, max_caption_len: int = 20, length_penalty: float = 0.0,
                 log_samples: int = 8, init_from: str | None = None, scst: bool = False, scst_samples: int = 5,
                 scst_baseline: ScstBaseline = "mean"):
        super().__init__()
        if vocab_size <= 4:
            raise ValueError(f"vocab_size must be linked from the data module (got {vocab_size}); build the "
                             "model through train.py / LightningCLI or pass data.vocab_size")
        self.save_hyperparameters()
        # From a checkpoint the CNN weights come from its state dict: the weights and init_from options are not
        # used then (and their files need not exist any more).
        loading = _LOADING_CHECKPOINT.get()
        if loading:
            self.check_options({**self.hparams, "weights": None, "init_from": None})
        elif checked_results() is None:  # else train.py has checked them
            self.check_options(self.hparams)
        self.encoder = ImageEncoder(encoder, None if _LOADING_CHECKPOINT.get() else weights, embed_size,
                                    frozen=True, feature_dim=feature_dim, feature_norm=feature_norm,
                                    attach=attach_encoder)
        self.decoder = CaptionDecoder(vocab_size, embed_size, hidden_size, num_layers, dropout, conditioning,
                                      uniform_init)
        self.vocab: Vocabulary | None = None  # set from the data module at setup, or from a checkpoint
        self.val_bleu = CorpusBLEU()
        self.test_bleu = CorpusBLEU()
        self.val_samples: list[dict[str, Any]] = []
        self._val_records: list[dict[str, Any]] = []  # this epoch's validation captions, for CIDEr-D
        self._init_pending = init_from is not None and not loading  # weights loaded at the first fit's setup
        self._attach_pending = attach_encoder and feature_dim is not None and not loading  # checked at fit setup
        self._scst: SelfCritical | None = None  # SCST: rewards against the training references, built at setup

    @staticmethod
    def check_options(options: Mapping[str, Any]) -> None:
        """Check the constructor arguments in ``options`` but ``vocab_size`` (linked at instantiation, checked
        by the constructor); ``OptionError`` (one line) for the first bad one. Cheap: no CNN is built (a
        weights file is memory-mapped and compared by names and shapes)."""
        opts = Options("model", options)
        opts.positive_int("feature_dim", optional=True)
        check_encoder_options(opts)
        opts.boolean("attach_encoder", "feature_norm")
        opts.positive_int("embed_size", "hidden_size", "num_layers")
        opts.fraction("dropout")
        opts.one_of("conditioning", get_args(Conditioning))
        opts.positive_number("uniform_init", optional=True)
        opts.one_of("optimizer", get_args(Optimizer))
        opts.positive_number("lr")
        opts.number("weight_decay", low=0)
        opts.fraction("momentum")
        opts.positive_int("lr_step_epochs", optional=True)
        opts.number("lr_decay", low=0, high=1, low_open=True)
        opts.non_negative_int("finetune_after", optional=True)
        opts.positive_number("finetune_lr")
        opts.positive_int("val_beam_size", "test_beam_size", "max_caption_len")
        opts.number("length_penalty", low=0)  # decoding's early stop assumes alpha >= 0
        opts.non_negative_int("log_samples")
        if options.get("init_from") is not None:
            opts.readable_file("init_from")
        opts.boolean("scst")
        opts.positive_int("scst_samples")
        opts.one_of("scst_baseline", get_args(ScstBaseline))
        if options.get("scst_baseline", "mean") == "mean" and options.get("scst_samples", 5) == 1:
            raise OptionError("--model.scst_samples must be >= 2 with --model.scst_baseline mean (each sample's "
                              "baseline is the mean reward of the other samples of its image), got 1; or use "
                              "--model.scst_baseline greedy")

    # ----- model --------------------------------------------------------------------------------------------
    def embed_images(self, images: Tensor) -> Tensor:
        """Pixels (B,3,H,W) or precomputed features (B,D) -> image embeddings (B,E)."""
        if images.dim() == 2:
            images = images.to(self.encoder.embed.weight.dtype)  # cached features are stored as float16
        return self.encoder(images)

    def forward(self, images: Tensor, captions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher-forced: captions (B,T) = <start> w1..wn <end> <pad>.. -> logits (B,T-1,V) for w1..wn <end>,
        or (M,V) for the M positions where ``mask`` (B,T-1) is true (see ``CaptionDecoder.forward``)."""
        return self.decoder(self.embed_images(images), captions[:, :-1], mask)

    @torch.no_grad()
    def generate(self, images: Tensor, beam_size: int = 1, top_k: int = 1, max_len: int | None = None) -> Decoded:
        """Free-running decoding (greedy for beam_size 1) of a batch of images or features."""
        return decode(self.decoder, self.embed_images(images), beam_size=beam_size, top_k=top_k,
                      max_len=self.hparams.max_caption_len if max_len is None else max_len,
                      length_penalty=self.hparams.length_penalty)

    def captions_from(self, decoded: Decoded, k: int = 0) -> list[list[str]]:
        """Token lists of the k-th best caption of each image."""
        if self.vocab is None:
            raise RuntimeError("this model has no vocabulary: load it from a checkpoint or attach a data module")
        return [self.vocab.decode(ids) for ids in decoded.tokens[:, k].tolist()]

    # ----- training -----------------------------------------------------------------------------------------
    def _loss(self, batch: Batch) -> Tensor:
        """Mean cross-entropy over the real tokens; the output layer never sees a pad position."""
        targets = batch.captions[:, 1:]  # (B, T-1): w1..wn <end> <pad>..
        mask = targets != PAD_ID  # (B, T-1)
        logits = self(batch.images, batch.captions, mask)  # (M, V), M = real tokens
        return F.cross_entropy(logits.float(), targets[mask])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        size = len(batch.lengths)
        if self.hparams.scst:
            loss, stats = self._scst_loss(batch)
            for name, value in stats.items():
                self._log_train(f"train/{name}", value, size)
        else:
            loss = self._loss(batch)
        self._check_finite(loss, batch_idx)
        self._log_train("train/loss", loss, size)
        return loss

    def _log_train(self, name: str, value: Tensor, batch_size: int) -> None:
        """``<name>_step`` (this process's step value, to the logger every log_every_n_steps) and ``<name>_epoch``
        (the epoch mean over all processes). Nothing reaches the progress bar, so no step forces a host-device
        synchronisation; under DDP the epoch mean is synchronised once, at the epoch's end (a per-step sync would
        be a collective per step, and hangs when processes have unequal batch counts)."""
        self.log(f"{name}_step", value, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log(f"{name}_epoch", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def use_training_reward(self, reward: Callable[[list[list[str]], np.ndarray], np.ndarray]) -> None:
        """Train with SCST against ``reward`` (captions, training-split indices) -> CIDEr-D per caption."""
        hp = self.hparams
        self._scst = SelfCritical(reward, self.vocab, hp.scst_samples, hp.scst_baseline, hp.max_caption_len)

    def _scst_loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        """Self-critical loss of a batch of training images (``batch.indices``: their training-split index)."""
        if self._scst is None:
            raise RuntimeError("SCST rewards are built in setup('fit') from the data module's training references; "
                               "fit with a CaptionDataModule")
        return self._scst.loss(self.decoder, self.embed_images(batch.images), batch.indices)

    def _check_finite(self, loss: Tensor, batch_idx: int) -> None:
        """Stop at the first non-finite loss, before an optimizer step spreads NaNs into the weights (and into
        a checkpoint). On CUDA the check is one small synchronisation per step."""
        if not torch.isfinite(loss.detach()).item():
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} (batch "
                f"{batch_idx}); training stopped, the checkpoints written so far are kept. Try a lower "
                f"--model.lr (now {self.hparams.lr}) or gradient clipping (--trainer.gradient_clip_val 5)")

    def on_train_epoch_end(self) -> None:
        loss = self.trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None and not self.hparams.scst:  # the SCST loss is no cross-entropy
            self.log("train/perplexity", torch.exp(loss), prog_bar=True)

    # ----- evaluation ---------------------------------------------------------------------------------------
    def _evaluate(self, batch: Batch, stage: str, beam_size: int, bleu: CorpusBLEU) -> list[dict[str, Any]]:
        """Loss, free-running captions and BLEU counts of a batch; one record per image."""
        size = len(batch.lengths)
        self.log(f"{stage}/loss", self._loss(batch), on_epoch=True, sync_dist=True, batch_size=size)
        hypotheses = self.captions_from(self.generate(batch.images, beam_size=beam_size))
        bleu.update(hypotheses, batch.references, batch.indices)
        return [{"index": int(i), "image_id": name, "caption": " ".join(h), "references": [" ".join(r) for r in refs]}
                for i, name, h, refs in zip(batch.indices.tolist(), batch.image_ids, hypotheses, batch.references)]

    def on_validation_epoch_start(self) -> None:
        self._val_records = []

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        records = self._evaluate(batch, "val", self.hparams.val_beam_size, self.val_bleu)
        self._val_records += records
        if batch_idx == 0:
            self.val_samples = [{k: r[k] for k in ("image_id", "caption", "references")}
                                for r in records[: self.hparams.log_samples]]

    def on_validation_epoch_end(self) -> None:
        self._log_bleu("val", self.val_bleu)
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            self.log("val/perplexity", torch.exp(loss))
        records = gather_records(self._val_records)  # every process gets all images: same value everywhere
        if records:
            score = cider_d([r["caption"].split() for r in records], [[ref.split() for ref in r["references"]]
                                                                      for r in records])
            self.log("val/cider", float(score))
        self._val_records = []

    def _log_bleu(self, stage: str, bleu: CorpusBLEU) -> dict[str, Tensor]:
        scores = bleu.compute()  # already synchronised (and de-duplicated) across processes
        bleu.reset()
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val")
        return scores

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Any]]:
        """Decode at ``test_beam_size``; the records go to ``TestOutputWriter`` (scores, files, table)."""
        return self._evaluate(batch, "test", self.hparams.test_beam_size, self.test_bleu)

    def on_test_epoch_end(self) -> None:
        self._log_bleu("test", self.test_bleu)

    def configure_callbacks(self) -> list:
        return [TestOutputWriter()]

    def predict_step(self, batch: Any, batch_idx: int = 0) -> list[list[tuple[str, float]]]:
        """Captions for ``Trainer.predict`` (``python -m showtell.caption``): per image of ``batch`` (pixels
        (B, 3, H, W), or an object whose ``images`` holds them, or None when none of its files could be read)
        its ranked (caption, log-probability) list, best first. The decoding is ``self.predict_decoding``
        (keyword arguments of ``ranked_captions``: ``beam_size``, ``top_k``, ``max_len``), which the caller sets
        before ``predict`` in every process; without it, the test beam and the best caption only."""
        images = batch if isinstance(batch, Tensor) else batch.images
        if images is None or len(images) == 0:
            return []
        decoding = getattr(self, "predict_decoding", None) or {"beam_size": self.hparams.test_beam_size}
        return self.ranked_captions(images, **decoding)

    @torch.inference_mode()
    def ranked_captions(self, images: Tensor, beam_size: int = 1, top_k: int = 1,
                        max_len: int | None = None) -> list[list[tuple[str, float]]]:
        """(B, 3, H, W) pixels (or (B, D) features) -> per image the ``top_k`` best (caption, log-probability),
        best first; the beam is widened to ``top_k`` if it is narrower."""
        decoded = self.generate(images, beam_size=max(beam_size, top_k), top_k=top_k, max_len=max_len)
        captions = [self.captions_from(decoded, k) for k in range(top_k)]  # K x B token lists
        log_probs = decoded.log_probs.tolist()  # (B, K)
        # Tiny vocabularies can have fewer than K distinct captions: the missing ones score -inf.
        finite = torch.isfinite(decoded.log_probs).tolist()
        return [[(" ".join(captions[k][b]), log_probs[b][k]) for k in range(top_k) if finite[b][k]]
                for b in range(len(images))]

    # ----- optimisation -------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]  # the frozen CNN never reaches the optimizer
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.lr_step_epochs:
            return opt
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.lr_step_epochs, gamma=hp.lr_decay)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def on_train_epoch_start(self) -> None:
        after = self.hparams.finetune_after
        if after is not None and self.current_epoch == after and self.encoder.frozen:
            if self.trainer.world_size > 1:
                raise RuntimeError("finetune_after is not supported under DDP (parameters unfrozen mid-run are "
                                   "not synchronised); fine-tune on one device or drop finetune_after")
            if self.encoder.backbone is None:
                raise RuntimeError("finetune_after needs a CNN, but this model trains on precomputed features")
            self.encoder.unfreeze()
            self.trainer.optimizers[0].add_param_group(
                {"params": list(self.encoder.backbone.parameters()), "lr": self.hparams.finetune_lr})
            print(f"epoch {after}: fine-tuning the {self.hparams.encoder} encoder at lr {self.hparams.finetune_lr}")

    # ----- checkpoints --------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.attached_trainer(), "datamodule", None)
        vocab = getattr(datamodule, "vocab", None)
        if vocab is not None:
            if self.vocab is not None and self.vocab != vocab:
                raise ValueError("the data module's vocabulary differs from this model's (checkpoint trained on "
                                 "other data or with another min_count); evaluate with the same data settings")
            self.vocab = vocab
        if len(self.vocab or []) not in (0, self.hparams.vocab_size):
            raise ValueError(f"vocabulary has {len(self.vocab)} words but the model was built for "
                             f"{self.hparams.vocab_size}")
        if stage != "fit":
            return
        fit_data = datamodule.fit_data() if hasattr(datamodule, "fit_data") else None
        if self._attach_pending:
            line = check_attached_encoder(self.encoder.backbone, self.hparams.encoder, self.hparams.weights, fit_data)
            if self._is_global_zero():
                print(line, flush=True)
            self._attach_pending = False
        if self._init_pending:  # before a resumed fit restores its own checkpoint, which then wins
            self.load_weights_from(self.hparams.init_from)
            self._init_pending = False
        if self.hparams.scst and self._scst is None:
            if fit_data is None:
                raise ValueError("--model.scst needs the training references: fit with a CaptionDataModule")
            self.use_training_reward(training_reward(fit_data.train_references))

    def load_weights_from(self, path: str) -> None:
        """Copy the weights of a train.py checkpoint into this model (not its optimizer, epoch or RNG states);
        its vocabulary must equal this model's (the data's). One-line ``OptionError``/``CheckpointError``."""
        epoch = load_weights(self, path, self.vocab, self.hparams.vocab_size)
        if self._is_global_zero():
            print(f"init_from: weights of {path} (epoch {epoch} of its run)", flush=True)

    def _is_global_zero(self) -> bool:
        trainer = self.attached_trainer()
        return trainer is None or trainer.is_global_zero

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.vocab is not None:
            checkpoint["showtell_vocab"] = self.vocab.to_dict()
        checkpoint["showtell_rng"] = rng_states()  # a resumed fit continues with the same random numbers
        if self.attached_trainer() is not None:
            for logger in self.trainer.loggers:
                logger.save()  # the logs up to this checkpoint survive a kill (CSV buffers 100 steps)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "showtell_vocab" in checkpoint:
            self.vocab = Vocabulary.from_dict(checkpoint["showtell_vocab"])
        trainer = self.attached_trainer()
        fitting = trainer is not None and trainer.state.fn == "fit"
        if fitting and "showtell_rng" in checkpoint:  # resuming (not loading weights to evaluate)
            set_rng_states(checkpoint["showtell_rng"])

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs):
        """As Lightning's, without downloading pretrained CNN weights (the checkpoint holds them)."""
        with restoring():
            return super().load_from_checkpoint(checkpoint_path, map_location=map_location,
                                                hparams_file=hparams_file, strict=strict, **kwargs)

    def attached_trainer(self):
        """The Trainer running this module, or None (built alone, or loaded to caption or evaluate)."""
        try:
            return self.trainer
        except RuntimeError:  # Lightning's answer for a module not attached to a Trainer
            return None

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, sum(p.numel() for p in self.parameters()) - trainable


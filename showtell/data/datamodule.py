"""Flickr8k, Flickr30k or MS-COCO as a LightningDataModule: image/caption pairs for training, images with all
references for eval (``CaptionDataModule``; ``Flickr8kDataModule`` is the same class under its first name).

Self-critical training (``train_per_image``, linked from ``--model.scst``) trains on images instead: one
sample per training image and epoch, carrying all its references; ``Batch.indices`` is then the image's
index in the training split (``datasets["train"].references[i]`` are its references).

Samples come either from image files (decoded and transformed per step) or from encoder features computed
once (the default with a frozen encoder and no augmentation, see ``showtell.data.features``) or brought by the
user (``features=...``). Datasets fetch whole batches at once (``__getitems__``), so on in-memory features
a batch is a few tensor gathers, never a Python loop over samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from showtell.data.batching import BucketBatchSampler
from showtell.data.dataset import Batch, CaptionDataset
from showtell.data.feature_source import FeatureSource
from showtell.data.features import FeaturesFileError, FeatureTable, load_features
from showtell.data.formats import SkipReport
from showtell.data.sources import CaptionCorpus, load_corpus
from showtell.errors import DatasetError, OptionError
from showtell.files import say
from showtell.model.backbones import check_encoder_options, eval_transform, image_transform, preprocess_for
from showtell.options import Options, checked_results, shown_path
from showtell.vocab import Vocabulary, word_counts


class FeaturesOptionError(OptionError, DatasetError):
    """A bad ``--data.features`` file: a bad option, found when the data module is built, and bad data."""


Format = Literal["auto", "kaggle", "original", "karpathy"]
DatasetName = Literal["auto", "flickr8k", "flickr30k", "coco"]
Split = Literal["test", "val"]


@dataclass(frozen=True)
class FitData:
    """What the model reads from the data when fitting (``ShowTellModule.setup``), handed over explicitly."""

    train_references: Sequence[Sequence[Sequence[str]]] | None  # per training image (SCST); None: per caption
    features: FeatureTable | None  # bring-your-own features (--data.features), else None
    features_path: str | None
    image_folder: Path | None
    image_path: Callable[[str], Path | None]  # image name -> its file (None without an image folder)
    image_size: int | None


_say = rank_zero_only(say)  # once per run, not once per DDP process


def _epoch_to_train(trainer: Any) -> int:
    """The epoch Lightning passes to the train sampler's ``set_epoch`` next (0 without a trainer)."""
    progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None), "current", None)
    if progress is not None:
        return int(progress.processed)
    return int(getattr(trainer, "current_epoch", 0) or 0)


def _passthrough(batch: Batch) -> Batch:
    return batch  # the dataset already returns a collated Batch


class CaptionDataModule(L.LightningDataModule):
    """Flickr8k (Kaggle, original or Karpathy layout), Flickr30k or MS-COCO (Karpathy's split), or the offline
    synthetic demo.

    Args:
        root: folder holding the dataset (any published layout), or where the demo is generated.
        format: ``auto`` detects the layout from the files in ``root``.
        dataset: which of Karpathy's files to read (``dataset_<name>.json``); ``auto`` takes the one in
            ``root`` (its ``dataset`` field names it). The original and Kaggle layouts are Flickr8k's.
        image_dir: the folder holding the images (for COCO: holding ``train2014/`` and ``val2014/``, or all
            images in one folder), instead of looking for it in ``root``.
        restval: COCO's ``restval`` images join train (Karpathy's convention: 113,287 train images); false
            leaves them out (reported).
        batch_size: training batch size (captions per step; images per step with ``train_per_image``).
        bucket_by_length: training batches of captions of similar length (``showtell.batching``): about half
            the padded positions of random batches, same epoch content; the order is a function of
            ``shuffle_seed`` and the epoch. Not used with ``train_per_image`` (plain shuffled images).
        train_per_image: training samples are images (each once per epoch, with all its references) instead
            of (image, caption) pairs: self-critical training. Linked from ``--model.scst`` in the CLI.
        shuffle_seed: seed of the training batch order; default: the run's ``seed_everything``.
        eval_batch_size: images per validation/test step (default 4 x batch_size; decoding is batched).
        test_split: the split ``trainer.test`` decodes and scores (``showtell.evaluate --split`` sets it).
        num_workers: image-decoding workers (unused on in-memory features).
        min_count: words seen fewer times in the train split map to ``<unk>``.
        max_len: training captions are cut to this many words (default keeps all Flickr8k captions).
        encoder, weights: the backbone whose preprocessing (and cached features) to use; linked from
            the model in the CLI.
        image_size: resize whole images to this square size instead of the weights' resize + centre crop.
        augment: random resized crops at train time (forces images instead of cached features).
        features: a bring-your-own ``.npz`` (``names``, ``features``); no image folder needed then.
        cache_features: with a frozen encoder and no augmentation, extract features once and train on them.
        cache_dir: where cached features go (default ``<root>/.showtell_cache``).
        frozen_encoder: whether the encoder stays frozen for the whole run (linked from the model).
        demo: generate the synthetic shapes dataset into ``root`` if it holds no dataset.
        demo_images, demo_image_size, demo_seed: size, resolution and seed of the demo.
        split_seed: seed of the by-image split used when the layout carries no official split.
        progress: progress bars for one-time work (demo generation, image scan, feature extraction).
    """

    def __init__(self, root: str = "data/flickr8k", format: Format = "auto", dataset: DatasetName = "auto",
                 image_dir: str | None = None, restval: bool = True,
                 batch_size: int = 64, bucket_by_length: bool = True, train_per_image: bool = False,
                 shuffle_seed: int | None = None,
                 eval_batch_size: int | None = None, test_split: Split = "test",
                 num_workers: int = 4,
                 min_count: int = 5, max_len: int = 40, encoder: str = "resnet50", weights: str | None = "DEFAULT",
                 image_size: int | None = None, augment: bool = False, features: str | None = None,
                 cache_features: bool = True, cache_dir: str | None = None, frozen_encoder: bool = True,
                 demo: bool = False, demo_images: int = 3000, demo_image_size: int = 128, demo_seed: int = 0,
                 split_seed: int = 0, progress: bool = True):
        super().__init__()
        self.save_hyperparameters()
        checked = checked_results()  # train.py checked the options already (and read the features file)
        features_table = checked["features_table"] if checked is not None else self.check_options(self.hparams)
        self.root = Path(root).expanduser()
        self._corpus: CaptionCorpus | None = None
        self._vocab: Vocabulary | None = None
        self._given_vocab = False  # use_vocabulary: a checkpoint's, not built from this data
        self.feature_source = FeatureSource(
            features=features, table=features_table, cache_features=cache_features, augment=augment,
            frozen_encoder=frozen_encoder, encoder=encoder, weights=weights, image_size=image_size,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else self.root / ".showtell_cache",
            num_workers=num_workers, progress=progress)
        self.datasets: dict[str, CaptionDataset] = {}
        self.report = SkipReport()

    @staticmethod
    def check_options(options: Mapping[str, Any], encoder: bool = True) -> FeatureTable | None:
        """Check the constructor arguments in ``options``; ``OptionError`` (one line) for the first bad one.
        ``encoder=False`` leaves ``encoder`` and ``weights`` to the model's check (the CLI links them from it).

        Cheap: reads neither the captions nor the images; a ``features`` file is read (it is checked for
        names, shape and finite values) and returned, else None. ``encoder`` and ``weights`` are linked from
        the model in the CLI, so their messages name ``--model.encoder`` and ``--model.weights``.
        """
        opts = Options("data", options)
        opts.folder("root")
        opts.one_of("format", get_args(Format))
        opts.one_of("dataset", get_args(DatasetName))
        if options.get("format") in ("kaggle", "original") and options.get("dataset") in ("flickr30k", "coco"):
            raise OptionError(f"--data.format {options['format']} is a Flickr8k layout, but --data.dataset "
                              f"{options['dataset']} comes as Karpathy's dataset_{options['dataset']}.json: use "
                              "--data.format karpathy or auto")
        opts.folder("image_dir", optional=True)
        image_dir = options.get("image_dir")
        if image_dir is not None and not Path(image_dir).expanduser().is_dir():
            raise OptionError(f"--data.image_dir {shown_path(image_dir)}: no such folder; give the folder holding "
                              "the images, or leave it out to find it in --data.root")
        opts.positive_int("batch_size")
        opts.boolean("restval", "bucket_by_length", "train_per_image", "augment", "cache_features", "frozen_encoder",
                     "demo", "progress")
        opts.integer("shuffle_seed", optional=True)
        opts.positive_int("eval_batch_size", optional=True)
        opts.one_of("test_split", get_args(Split))
        opts.non_negative_int("num_workers")
        opts.positive_int("min_count", "max_len")
        if encoder:
            check_encoder_options(Options("model", {k: options[k] for k in ("encoder", "weights") if k in options}))
        opts.positive_int("image_size", optional=True)
        opts.folder("cache_dir", optional=True)
        opts.integer("demo_images", minimum=8)  # showtell.data.synthetic.generate_demo's limits: every split gets an image
        opts.integer("demo_image_size", minimum=32)
        opts.non_negative_int("demo_seed")
        opts.integer("split_seed")
        features = options.get("features")
        if features is None:
            return None
        if not isinstance(features, (str, os.PathLike)) or not str(features):
            opts.fail("features", "an .npz file path", optional=True)
        try:
            return load_features(features)
        except FeaturesFileError as err:
            raise FeaturesOptionError(f"--data.features {shown_path(features)}: {err.problem}") from None

    # ----- what the CLI links into the model -------------------------------------------------------------
    @property
    def vocab(self) -> Vocabulary:
        """The train split's words seen at least ``min_count`` times, or the vocabulary ``use_vocabulary`` gave."""
        if self._vocab is None:
            corpus = self.corpus
            counts = word_counts(text for name in corpus.splits["train"] for text in corpus.normalized_captions(name))
            self._vocab = Vocabulary.from_counts(counts, min_count=self.hparams.min_count)
        return self._vocab

    def use_vocabulary(self, vocab: Vocabulary) -> None:
        """Encode the captions with ``vocab`` (a checkpoint's) instead of building one from the train split:
        evaluating a model on another dataset (transfer). The references are scored as they are; words the
        model does not know are ``<unk>`` in the teacher-forced loss (``setup`` says how many). Before ``setup``."""
        if self.datasets:
            raise RuntimeError("use_vocabulary must be called before setup")
        self._vocab, self._given_vocab = vocab, True

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def feature_dim(self) -> int | None:
        """D of a bring-your-own features file (the model then has no CNN), else None."""
        return self.feature_source.dim

    @property
    def features_table(self) -> FeatureTable | None:
        """The bring-your-own features (``--data.features``), else None."""
        return self.feature_source.user()

    def fit_data(self) -> FitData:
        """What a model needs from the data when fitting, in one object (after ``setup("fit")``)."""
        train = self.datasets.get("train")
        per_image = train is not None and len(train) == len(train.names)
        return FitData(train_references=train.references if per_image else None, features=self.features_table,
                       features_path=self.hparams.features, image_folder=self.image_folder,
                       image_path=self.image_path, image_size=self.hparams.image_size)

    # ----- corpus and features -----------------------------------------------------------------------------
    @property
    def corpus(self) -> CaptionCorpus:
        if self._corpus is None:
            self._corpus = self._load_corpus()
        return self._corpus

    def _load_corpus(self) -> CaptionCorpus:
        hp = self.hparams
        if hp.demo:
            from showtell.data.synthetic import generate_demo
            generate_demo(self.root, num_images=hp.demo_images, seed=hp.demo_seed,
                          image_size=hp.demo_image_size, progress=hp.progress)
        corpus = load_corpus(self.root, hp.format, dataset=hp.dataset, image_dir=hp.image_dir, restval=hp.restval,
                             split_seed=hp.split_seed, require_images=not hp.features, progress=hp.progress)
        self.report = corpus.report
        if hp.features:
            self._drop_images_without_features(corpus)
        return corpus

    @property
    def image_folder(self) -> Path | None:
        """The folder holding the images (given as ``image_dir`` or found in ``root``; for COCO the one holding
        ``train2014/`` and ``val2014/``). With bring-your-own ``features`` it may be None: no images needed."""
        return self.corpus.image_dir

    def image_path(self, name: str) -> Path | None:
        """The image file of ``name`` (an image id of the corpus), or None when there is no image folder."""
        return self.corpus.image_path(name) if self.corpus.image_dir is not None else None

    def _drop_images_without_features(self, corpus: CaptionCorpus) -> None:
        table = self.feature_source.user()
        for split, names in corpus.splits.items():
            kept = [n for n in names if n in table.row]
            for name in names:
                if name not in table.row:
                    corpus.report.add(f"images missing from the features file ({split})", name)
            if not kept:
                raise DatasetError(f"none of the {len(names)} {split} images of {self.root} is in the features "
                                   f"file {self.hparams.features}; do the names match the caption file?")
            corpus.splits[split] = kept

    @property
    def uses_cache(self) -> bool:
        """Whether training reads encoder features computed once instead of images (``feature_source.reason``
        says why or why not)."""
        return self.feature_source.uses_cache

    def cache_file(self) -> Path:
        """The feature cache file of this corpus (whether or not it is used)."""
        return self.feature_source.cache_file(self._image_names())

    def _image_names(self) -> list[str]:
        """Every image of every split, sorted: the rows of the feature cache."""
        return sorted(n for names in self.corpus.splits.values() for n in names)

    def _features(self) -> FeatureTable | None:
        """What training reads: bring-your-own features, the (cached) features of our encoder, or None."""
        names = self._image_names() if self.uses_cache else ()
        return self.feature_source.table(names, self.corpus.image_path)

    # ----- Lightning hooks -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: generate the demo and fill the feature cache once.
        _ = self.corpus
        if self.uses_cache:
            self._features()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        corpus, vocab = self.corpus, self.vocab
        features = self._features()
        train_transform = test_transform = None
        if features is None:
            test_transform = eval_transform(hp.encoder, hp.weights, hp.image_size)
            if hp.augment:
                train_transform = image_transform(preprocess_for(hp.encoder, hp.weights, None), hp.image_size, True)
            else:
                train_transform = test_transform
        for split in ("train", "val", "test"):
            self.datasets[split] = CaptionDataset(
                corpus.splits[split], corpus.captions, vocab, max_len=hp.max_len,
                per_caption=split == "train" and not hp.train_per_image,
                features=features, image_dir=corpus.image_dir, subfolders=corpus.subfolders, texts=corpus.texts,
                transform=train_transform if split == "train" else test_transform)
        if self.report.counts():
            _say(self.report.summary())
        _say(self.describe() + f" ({self.feature_source.reason})")
        if self._given_vocab:
            for split in dict.fromkeys(("val", self.test_split)):
                unknown, total = self.datasets[split].unknown_words(vocab)
                _say(f"vocabulary: the checkpoint's ({len(vocab)} words); {unknown} of the {total} words of the "
                     f"{split} references ({100 * unknown / max(total, 1):.1f}%) are not in it: the model never "
                     "produces them, and the teacher-forced loss counts them as <unk>")

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(set(d.names))} images/{len(d)} samples" for s, d in self.datasets.items())
        corpus = self.corpus
        which = f" ({corpus.dataset})" if corpus.format == "karpathy" else ""  # the others are Flickr8k's layouts
        return f"data: {corpus.format} layout{which} at {self.root}: {sizes}; vocab {self.vocab_size} words"

    def _loader(self, split: str, **batching) -> DataLoader:
        dataset = self.datasets[split]
        in_memory = dataset.features is not None
        workers = 0 if in_memory else self.hparams.num_workers  # gathers from RAM: workers only add IPC
        return DataLoader(dataset, collate_fn=_passthrough, num_workers=workers,
                          pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0, **batching)

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None and self.trainer.overfit_batches:
            # Overfitting the same first batches: Lightning wants a sequential sampler (it would replace ours
            # with a per-sample one, giving batches of one caption).
            return self._loader("train", batch_size=self.hparams.batch_size, shuffle=False)
        return self._loader("train", sampler=self.train_sampler(), batch_size=None)

    def train_sampler(self) -> BucketBatchSampler:
        """This process's training batches: bucketed or plain shuffled, by seed and epoch, DDP-aware."""
        trainer = self.trainer
        replicas, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        bucket = self.hparams.bucket_by_length and not self.hparams.train_per_image  # images: nothing to pad
        sampler = BucketBatchSampler(self.datasets["train"].lengths, self.hparams.batch_size,
                                     bucket=bucket, seed=self.shuffle_seed, num_replicas=replicas, rank=rank)
        # Lightning creates (and prefetches from) the first iterator of a fit before it calls set_epoch; so the
        # sampler starts at the epoch Lightning is about to set (its fit loop's processed epochs: after a resume
        # from the end of epoch k, that is k + 1, while trainer.current_epoch still says k), not at epoch 0.
        sampler.set_epoch(_epoch_to_train(trainer))
        return sampler

    @property
    def shuffle_seed(self) -> int:
        """``shuffle_seed``, else the seed ``seed_everything`` set (Lightning exports it as PL_GLOBAL_SEED)."""
        if self.hparams.shuffle_seed is not None:
            return self.hparams.shuffle_seed
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, batch_size=self.eval_batch_size, shuffle=False)

    @property
    def test_split(self) -> str:
        return self.hparams.test_split

    @property
    def eval_batch_size(self) -> int:
        return self.hparams.eval_batch_size or 4 * self.hparams.batch_size


Flickr8kDataModule = CaptionDataModule  # the name configs, checkpoints' users and scripts already use

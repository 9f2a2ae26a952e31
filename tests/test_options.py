"""Bad options fail when the objects are built, with one line naming the option, the value and what is allowed:
through the constructors, through ``train.py`` (exit code 2, one line on stderr), and good values still pass."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from conftest import REPO

from showtell.data.datamodule import Flickr8kDataModule
from showtell.data.features import save_features
from showtell.errors import DatasetError, OptionError
from showtell.model.decoder import CONDITIONING
from showtell.options import check_trainer_options
from showtell.train import main
from showtell.training.module import Conditioning, ShowTellModule

MODEL = dict(vocab_size=30, encoder="resnet18", weights=None, embed_size=8, hidden_size=8)
DATA = dict(encoder="resnet18", weights=None, progress=False)


# ----------------------------------------------------------------------------------------------- bad files
def _npz(folder: Path, name: str, **arrays) -> str:
    np.savez(folder / name, **arrays)
    return str(folder / name)


def _names(n: int) -> np.ndarray:
    return np.array([f"img_{i}.jpg" for i in range(n)])


def _write_bad_files(folder: Path) -> None:
    """Every kind of unusable weights and features file, under fixed names (used as ``{files}/NAME``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a_file").write_text("not a folder")
    (folder / "garbage.pth").write_text("not a checkpoint")
    (folder / "folder.pth").mkdir(exist_ok=True)
    torch.save({"conv1.weight": torch.zeros(3)}, folder / "wrong_keys.pth")
    torch.save([torch.zeros(3)], folder / "list.pth")
    state = torchvision.models.resnet18(num_classes=10).state_dict()  # right names, one wrong shape
    torch.save(state, folder / "wrong_shape.pth")
    (folder / "garbage.npz").write_text("not a zip")
    (folder / "folder.npz").mkdir(exist_ok=True)
    _npz(folder, "no_names.npz", features=np.zeros((2, 3)))
    _npz(folder, "no_features.npz", names=_names(2))
    _npz(folder, "rank3.npz", names=_names(2), features=np.zeros((2, 3, 4)))
    _npz(folder, "rank1.npz", names=_names(2), features=np.zeros(2))
    _npz(folder, "names2d.npz", names=_names(4).reshape(2, 2), features=np.zeros((2, 3)))
    _npz(folder, "rows.npz", names=_names(3), features=np.zeros((2, 3)))
    _npz(folder, "nan.npz", names=_names(2), features=np.array([[0.0, 1.0], [np.nan, 2.0]]))
    _npz(folder, "inf.npz", names=_names(2), features=np.array([[0.0, np.inf], [1.0, 2.0]], np.float16))
    _npz(folder, "dup.npz", names=np.array(["a.jpg", "b.jpg", "a.jpg"]), features=np.zeros((3, 2)))
    _npz(folder, "int_names.npz", names=np.arange(2), features=np.zeros((2, 2)))
    _npz(folder, "object_names.npz", names=np.array(["a.jpg", 3], dtype=object), features=np.zeros((2, 2)))
    _npz(folder, "text_features.npz", names=_names(2), features=np.array([["a", "b"], ["c", "d"]]))
    _npz(folder, "empty.npz", names=_names(0), features=np.zeros((0, 4)))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_files")
    _write_bad_files(folder)
    return folder


# ------------------------------------------------------------------------------------- through constructors
# (target, keyword arguments, option named, value shown, what the message says is allowed or wrong).
# "{files}" is the folder of bad files above.
BAD = [
    ("model", {"lr": -1.0}, "--model.lr", "-1.0", "must be > 0"),
    ("model", {"lr": 0}, "--model.lr", "0", "must be > 0"),
    ("model", {"lr": float("nan")}, "--model.lr", "nan", "finite number > 0"),
    ("model", {"finetune_lr": 0.0}, "--model.finetune_lr", "0.0", "must be > 0"),
    ("model", {"weight_decay": -0.1}, "--model.weight_decay", "-0.1", "must be >= 0"),
    ("model", {"momentum": 1.0}, "--model.momentum", "1.0", "in [0, 1)"),
    ("model", {"dropout": 1.5}, "--model.dropout", "1.5", "in [0, 1)"),
    ("model", {"dropout": -0.1}, "--model.dropout", "-0.1", "in [0, 1)"),
    ("model", {"embed_size": 0}, "--model.embed_size", "0", "positive integer"),
    ("model", {"hidden_size": 2.5}, "--model.hidden_size", "2.5", "positive integer"),
    ("model", {"num_layers": 0}, "--model.num_layers", "0", "positive integer"),
    ("model", {"val_beam_size": 0}, "--model.val_beam_size", "0", "positive integer"),
    ("model", {"test_beam_size": -3}, "--model.test_beam_size", "-3", "positive integer"),
    ("model", {"max_caption_len": 0}, "--model.max_caption_len", "0", "positive integer"),
    ("model", {"lr_step_epochs": 0}, "--model.lr_step_epochs", "0", "positive integer or null"),
    ("model", {"lr_decay": 0.0}, "--model.lr_decay", "0.0", "in (0, 1]"),
    ("model", {"finetune_after": -1}, "--model.finetune_after", "-1", "non-negative integer or null"),
    ("model", {"uniform_init": -0.08}, "--model.uniform_init", "-0.08", "> 0 or null"),
    ("model", {"length_penalty": -0.5}, "--model.length_penalty", "-0.5", ">= 0"),
    ("model", {"log_samples": -1}, "--model.log_samples", "-1", "non-negative integer"),
    ("model", {"feature_dim": 0}, "--model.feature_dim", "0", "positive integer or null"),
    ("model", {"feature_norm": "yes"}, "--model.feature_norm", "'yes'", "true or false"),
    ("model", {"conditioning": "side"}, "--model.conditioning", "'side'", "one of pre, init, par, merge"),
    ("model", {"optimizer": "rmsprop"}, "--model.optimizer", "'rmsprop'", "one of adam, sgd"),
    ("model", {"encoder": "resnet9"}, "--model.encoder", "'resnet9'", "one of resnet18, resnet34"),
    ("model", {"weights": "IMAGENET_V9"}, "--model.weights", "'IMAGENET_V9'", "IMAGENET1K_V1"),
    ("model", {"weights": "IMAGENET1K_V2"}, "--model.weights", "'IMAGENET1K_V2'", "weights name for resnet18"),
    ("model", {"weights": "{files}/missing.pth"}, "--model.weights", "{files}/missing.pth", "no such file"),
    ("model", {"weights": "{files}/folder.pth"}, "--model.weights", "{files}/folder.pth", "is a folder"),
    ("model", {"weights": "{files}/garbage.pth"}, "--model.weights", "{files}/garbage.pth", "cannot be read"),
    ("model", {"weights": "{files}/list.pth"}, "--model.weights", "{files}/list.pth", "expected a state_dict"),
    ("model", {"weights": "{files}/wrong_keys.pth"}, "--model.weights", "{files}/wrong_keys.pth",
     "does not match torchvision resnet18"),
    ("model", {"weights": "{files}/wrong_shape.pth"}, "--model.weights", "{files}/wrong_shape.pth",
     "fc.weight has shape (10, 512), expected (1000, 512)"),
    ("data", {"root": "{files}/a_file"}, "--data.root", "{files}/a_file", "is a file, expected a folder"),
    ("data", {"cache_dir": "{files}/a_file"}, "--data.cache_dir", "{files}/a_file", "is a file, expected a folder"),
    ("data", {"batch_size": 0}, "--data.batch_size", "0", "positive integer"),
    ("data", {"batch_size": -64}, "--data.batch_size", "-64", "positive integer"),
    ("data", {"eval_batch_size": 0}, "--data.eval_batch_size", "0", "positive integer or null"),
    ("data", {"num_workers": -1}, "--data.num_workers", "-1", "non-negative integer"),
    ("data", {"min_count": 0}, "--data.min_count", "0", "positive integer"),
    ("data", {"max_len": 0}, "--data.max_len", "0", "positive integer"),
    ("data", {"image_size": 0}, "--data.image_size", "0", "positive integer or null"),
    ("data", {"demo_images": 4}, "--data.demo_images", "4", "integer >= 8"),
    ("data", {"demo_image_size": 16}, "--data.demo_image_size", "16", "integer >= 32"),
    ("data", {"demo_seed": -1}, "--data.demo_seed", "-1", "non-negative integer"),
    ("data", {"format": "coco"}, "--data.format", "'coco'", "one of auto, kaggle, original, karpathy"),
    ("data", {"test_split": "train"}, "--data.test_split", "'train'", "one of test, val"),
    ("data", {"augment": 1}, "--data.augment", "1", "true or false"),
    ("data", {"encoder": "alexnet"}, "--model.encoder", "'alexnet'", "one of resnet18"),
    ("data", {"weights": "{files}/missing.pth"}, "--model.weights", "{files}/missing.pth", "no such file"),
    ("data", {"features": "{files}/missing.npz"}, "--data.features", "{files}/missing.npz", "does not exist"),
    ("data", {"features": "{files}/folder.npz"}, "--data.features", "{files}/folder.npz", "is a folder"),
    ("data", {"features": "{files}/garbage.npz"}, "--data.features", "{files}/garbage.npz", "is not an .npz file"),
    ("data", {"features": "{files}/no_names.npz"}, "--data.features", "{files}/no_names.npz",
     "missing array 'names'"),
    ("data", {"features": "{files}/no_features.npz"}, "--data.features", "{files}/no_features.npz",
     "missing array 'features'"),
    ("data", {"features": "{files}/rank3.npz"}, "--data.features", "{files}/rank3.npz",
     "'features' has 3 dimensions, expected (N, D)"),
    ("data", {"features": "{files}/rank1.npz"}, "--data.features", "{files}/rank1.npz",
     "'features' has 1 dimension, expected (N, D)"),
    ("data", {"features": "{files}/names2d.npz"}, "--data.features", "{files}/names2d.npz",
     "'names' has 2 dimensions, expected (N,)"),
    ("data", {"features": "{files}/rows.npz"}, "--data.features", "{files}/rows.npz",
     "'features' has 2 rows but 'names' has 3 entries"),
    ("data", {"features": "{files}/nan.npz"}, "--data.features", "{files}/nan.npz", "NaN or inf in 1 of 2 rows"),
    ("data", {"features": "{files}/inf.npz"}, "--data.features", "{files}/inf.npz", "NaN or inf"),
    ("data", {"features": "{files}/dup.npz"}, "--data.features", "{files}/dup.npz", "duplicate image names"),
    ("data", {"features": "{files}/int_names.npz"}, "--data.features", "{files}/int_names.npz",
     "'names' must hold strings"),
    ("data", {"features": "{files}/object_names.npz"}, "--data.features", "{files}/object_names.npz",
     "'names' is an object array"),
    ("data", {"features": "{files}/text_features.npz"}, "--data.features", "{files}/text_features.npz",
     "'features' must hold numbers"),
    ("data", {"features": "{files}/empty.npz"}, "--data.features", "{files}/empty.npz", "'features' is empty"),
]


def _fill(value, files: Path):
    return value.replace("{files}", str(files)) if isinstance(value, str) else value


def _build(target: str, kwargs: dict, root: Path):
    if target == "model":
        return ShowTellModule(**MODEL | kwargs)
    return Flickr8kDataModule(**{"root": str(root), **DATA, **kwargs})


@pytest.mark.parametrize(("target", "kwargs", "option", "value", "says"), BAD,
                         ids=[f"{o}={next(iter(k.values()))}" for _, k, o, _, _ in BAD])
def test_bad_option_raises_one_line_naming_option_and_value(target, kwargs, option, value, says, files, tmp_path):
    kwargs = {k: _fill(v, files) for k, v in kwargs.items()}
    with pytest.raises(OptionError) as err:
        _build(target, kwargs, tmp_path / "not_read")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(option + " "), message
    assert _fill(value, files) in message and says in message, message
    assert not (tmp_path / "not_read").exists()  # nothing read or generated before the check


def test_features_errors_are_also_dataset_errors(files, tmp_path):
    # callers that handle data problems (DatasetError) keep working for bad features files
    with pytest.raises(DatasetError, match="does not exist"):
        Flickr8kDataModule(root=str(tmp_path), features=str(files / "missing.npz"), **DATA)


def test_vocab_size_keeps_its_own_error():
    with pytest.raises(ValueError, match="linked from the data module"):
        ShowTellModule(**MODEL | {"vocab_size": 0, "lr": -1.0})


def test_trainer_options():
    check_trainer_options(max_epochs=1, gradient_clip_val=0.0, log_every_n_steps=1, check_val_every_n_epoch=2,
                          accumulate_grad_batches=4, num_sanity_val_steps=-1)
    check_trainer_options(None)  # Lightning's defaults
    for kwargs, message in [
        ({"max_epochs": 0}, "--trainer.max_epochs must be a positive integer or null, got 0"),
        ({"max_epochs": -1}, "--trainer.max_epochs must be a positive integer or null, got -1"),
        ({"gradient_clip_val": -5.0}, "--trainer.gradient_clip_val must be >= 0 or null, got -5.0"),
        ({"log_every_n_steps": 0}, "--trainer.log_every_n_steps must be a positive integer or null, got 0"),
        ({"check_val_every_n_epoch": 0}, "--trainer.check_val_every_n_epoch must be a positive integer or null"),
        ({"accumulate_grad_batches": 0}, "--trainer.accumulate_grad_batches must be a positive integer or null"),
        ({"num_sanity_val_steps": -2}, "--trainer.num_sanity_val_steps must be an integer >= -1 or null, got -2"),
    ]:
        with pytest.raises(OptionError) as err:
            check_trainer_options(**kwargs)
        assert str(err.value).startswith(message)


# ------------------------------------------------------------------------------------- good values still pass
def _defaults(cls) -> dict:
    return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_defaults_and_boundary_values_pass(tmp_path):
    ShowTellModule.check_options(_defaults(ShowTellModule))  # as the CLI may call it, before linking
    assert Flickr8kDataModule.check_options(_defaults(Flickr8kDataModule)) is None
    ShowTellModule(**MODEL | dict(feature_dim=4, dropout=0.0, momentum=0.9, weight_decay=0.0, lr_step_epochs=None,
                                  lr_decay=1.0, finetune_after=0, length_penalty=0.0, uniform_init=None,
                                  log_samples=0, conditioning="merge", optimizer="sgd", weights="DEFAULT"))
    ShowTellModule(**MODEL | dict(feature_dim=4, weights="IMAGENET1K_V1"))  # a name: nothing is downloaded
    assert get_args(Conditioning) == CONDITIONING
    # lazy: a root that does not exist yet (the demo goes there) and a new cache folder are fine
    data = Flickr8kDataModule(root=str(tmp_path / "later"), cache_dir=str(tmp_path / "cache"), eval_batch_size=None,
                              image_size=None, num_workers=0, demo_images=8, demo_image_size=32, **DATA)
    assert not (tmp_path / "later").exists() and data.eval_batch_size == 256


def test_good_features_files_pass_and_are_read_once(tmp_path):
    save_features(tmp_path / "f16.npz", ["a.jpg", "b.jpg"], np.ones((2, 3), np.float16))
    data = Flickr8kDataModule(root=str(tmp_path), features=str(tmp_path / "f16.npz"), **DATA)
    assert data.feature_dim == 3 and data.feature_source._user is not None  # the table read by the check is kept
    np.savez(tmp_path / "f64.npz", names=np.array([b"a.jpg", b"b.jpg"]), features=np.ones((2, 5)))  # bytes, float64
    data = Flickr8kDataModule(root=str(tmp_path), features=str(tmp_path / "f64.npz"), **DATA)
    assert data.features_table.names == ["a.jpg", "b.jpg"] and data.features_table.features.dtype == torch.float32


def test_good_weights_files_pass(tmp_path):
    full = torchvision.models.resnet18()
    torch.save(full.state_dict(), tmp_path / "full.pth")
    full.fc = torch.nn.Identity()
    torch.save(full.state_dict(), tmp_path / "cut.pt")  # the backbone without its head
    for name in ("full.pth", "cut.pt"):
        ShowTellModule(**MODEL | dict(feature_dim=4, weights=str(tmp_path / name)))
        Flickr8kDataModule(root=str(tmp_path), **DATA | dict(weights=str(tmp_path / name)))


def test_checkpoint_loads_without_its_weights_file(tmp_path):
    # the CNN comes from the checkpoint's state dict: a weights file gone since training is no error
    model = ShowTellModule(**MODEL | dict(feature_dim=4))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "pytorch-lightning_version": L.__version__,
                "hyper_parameters": {**model.hparams, "weights": str(tmp_path / "gone.pth")}}, ckpt)
    loaded = ShowTellModule.load_from_checkpoint(ckpt, map_location="cpu")
    assert loaded.hparams.weights == str(tmp_path / "gone.pth")


# ------------------------------------------------------------------------------------------ through train.py
# (extra arguments, text the one stderr line holds). Options the parser itself rejects (a wrong type, a value
# outside a Literal such as --model.conditioning side) never reach the constructors and are not listed here.
CLI_BAD = [
    (["--model.lr=-1"], "--model.lr must be > 0, got -1.0"),
    (["--model.finetune_lr", "0"], "--model.finetune_lr must be > 0, got 0.0"),
    (["--model.dropout", "1.5"], "--model.dropout must be in [0, 1), got 1.5"),
    (["--model.embed_size", "0"], "--model.embed_size must be a positive integer, got 0"),
    (["--model.val_beam_size", "0"], "--model.val_beam_size must be a positive integer, got 0"),
    (["--model.test_beam_size", "0"], "--model.test_beam_size must be a positive integer, got 0"),
    (["--model.max_caption_len", "0"], "--model.max_caption_len must be a positive integer, got 0"),
    (["--model.lr_step_epochs", "0"], "--model.lr_step_epochs must be a positive integer or null, got 0"),
    (["--model.finetune_after=-1"], "--model.finetune_after must be a non-negative integer or null, got -1"),
    (["--model.weight_decay=-1"], "--model.weight_decay must be >= 0, got -1.0"),
    (["--model.encoder", "resnet9"], "--model.encoder must be one of resnet18, "),
    (["--model.weights", "IMAGENET_V9"], "--model.weights must be a torchvision weights name for resnet18"),
    (["--model.weights", "{files}/missing.pth"], "--model.weights {files}/missing.pth: no such file"),
    (["--model.weights", "{files}/garbage.pth"], "--model.weights {files}/garbage.pth: cannot be read"),
    (["--data.batch_size", "0"], "--data.batch_size must be a positive integer, got 0"),
    (["--data.eval_batch_size", "0"], "--data.eval_batch_size must be a positive integer or null, got 0"),
    (["--data.min_count", "0"], "--data.min_count must be a positive integer, got 0"),
    (["--data.num_workers=-2"], "--data.num_workers must be a non-negative integer, got -2"),
    (["--data.root", "{files}/a_file"], "--data.root {files}/a_file is a file, expected a folder"),
    (["--data.features", "{files}/missing.npz"], "--data.features {files}/missing.npz: does not exist"),
    (["--data.features", "{files}/rank3.npz"],
     "--data.features {files}/rank3.npz: 'features' has 3 dimensions, expected (N, D)"),
    (["--data.features", "{files}/nan.npz"], "--data.features {files}/nan.npz: 'features' holds NaN or inf"),
]


CLI_PARSER_BAD = [  # rejected by train.py's parser (types, Literals, unknown options), also as one line
    (["--model.lr", "fast"], 'Parser key "model.lr": Expected a float. Got value: fast'),
    (["--model.conditioning", "side"], "model.conditioning"),
    (["--data.batch_size", "abc"], "data.batch_size"),
    (["--model.nonsense", "1"], "nonsense"),
]


def _train_py_args(demo_root: Path, tmp_path: Path, extra: list[str], files: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "demo.yaml"), "--data.root", str(demo_root), "--data.demo", "false",
            "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"), *(_fill(a, files) for a in extra)]


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "says"), CLI_BAD + CLI_PARSER_BAD,
                         ids=[" ".join(a) for a, _ in CLI_BAD + CLI_PARSER_BAD])
def test_train_py_bad_option_exits_2_with_one_line(extra, says, files, demo_root, tmp_path, capsys):
    """train.py's main() in this process (the imports are paid once); the subprocess test below checks that
    the same holds for the real command."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_:
        main(_train_py_args(demo_root, tmp_path, extra, files))
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert exit_.value.code == 2 and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and _fill(says, files) in lines[0], err[-3000:]
    assert seconds < 20, f"{seconds:.1f} s"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()  # no work started


@pytest.mark.slow
@pytest.mark.parametrize(("extra", "says"), [CLI_BAD[0], CLI_PARSER_BAD[0], CLI_BAD[-1]],
                         ids=["constructor check", "parser", "features file"])
def test_train_py_command_bad_option(extra, says, files, demo_root, tmp_path):
    args = [sys.executable, str(REPO / "train.py"), *_train_py_args(demo_root, tmp_path, extra, files)]
    env = os.environ | {"WANDB_MODE": "disabled"}
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    seconds = time.perf_counter() - start
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert len(lines) == 1 and _fill(says, files) in lines[0], out.stderr[-3000:]
    assert seconds < 20, f"{seconds:.1f} s"
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs").exists()  # no work started

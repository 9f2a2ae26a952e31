"""Caption decoder: shapes, step-by-step == teacher forcing, gradients, init, padding, errors."""

from __future__ import annotations

import pytest
import torch

from showtell.model.decoder import CONDITIONING, CaptionDecoder, DecoderState
from showtell.vocab import PAD_ID, START_ID

V, E, H = 23, 8, 12


def make(conditioning: str, num_layers: int = 1, **kwargs) -> CaptionDecoder:
    torch.manual_seed(0)
    return CaptionDecoder(V, E, H, num_layers=num_layers, conditioning=conditioning, **kwargs)


def captions(B: int = 3, T: int = 6) -> torch.Tensor:
    torch.manual_seed(1)
    ids = torch.randint(4, V, (B, T))
    ids[:, 0] = START_ID
    return ids


@pytest.mark.parametrize("conditioning", CONDITIONING)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_forward_shapes(conditioning, num_layers):
    dec = make(conditioning, num_layers)
    logits = dec(torch.randn(3, E), captions(3, 6))
    assert logits.shape == (3, 6, V)
    state = dec.init_state(torch.randn(5, E))
    assert state.h.shape == state.c.shape == (num_layers, 5, H) and state.image.shape == (5, E)
    step_logits, state = dec.step(torch.full((5,), START_ID), state)
    assert step_logits.shape == (5, V) and isinstance(state, DecoderState)


@pytest.mark.parametrize("conditioning", CONDITIONING)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_step_reproduces_teacher_forced_logits(conditioning, num_layers):
    dec = make(conditioning, num_layers, uniform_init=0.3).eval()
    images, ids = torch.randn(3, E), captions(3, 7)
    expected = dec(images, ids)  # (B, T, V)
    state = dec.init_state(images)
    for t in range(ids.shape[1]):
        logits, state = dec.step(ids[:, t], state)
        assert torch.allclose(logits, expected[:, t], atol=1e-5), (conditioning, t)


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_image_changes_the_output(conditioning):
    dec = make(conditioning, uniform_init=0.3).eval()
    ids = captions(2, 5)
    a, b = dec(torch.randn(2, E), ids), dec(torch.randn(2, E), ids)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_every_parameter_gets_a_gradient(conditioning):
    dec = make(conditioning, num_layers=2).train()
    images = torch.randn(3, E, requires_grad=True)
    dec(images, captions()).logsumexp(-1).sum().backward()
    for name, p in dec.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_uniform_init_bounds():
    dec = make("init", uniform_init=0.08)
    for name, p in dec.named_parameters():
        assert p.abs().max() <= 0.08, name
        if p.numel() > 50:
            assert p.abs().max() > 0.07, name  # really uniform over the whole range, not left at 0
    default = make("pre", uniform_init=None)
    assert default.embedding.weight.abs().max() > 1  # nn.Embedding's N(0, 1)


def test_select_gathers_along_the_batch():
    dec = make("par", num_layers=2)
    state = dec.init_state(torch.randn(3, E))
    index = torch.tensor([2, 0, 0, 1])
    picked = CaptionDecoder.select(state, index)
    assert torch.equal(picked.h, state.h[:, index]) and torch.equal(picked.c, state.c[:, index])
    assert torch.equal(picked.image, state.image[index])


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_right_padding_does_not_change_earlier_outputs(conditioning):
    # Why no packing is needed: outputs before a caption's pads do not depend on them.
    dec = make(conditioning).eval()
    images, ids = torch.randn(3, E), captions(3, 6)
    padded = ids.clone()
    padded[:, 4:] = PAD_ID
    assert torch.allclose(dec(images, ids)[:, :4], dec(images, padded)[:, :4], atol=1e-6)


def test_dropout_active_only_in_train_mode():
    dec = make("pre", dropout=0.5)
    images, ids = torch.randn(2, E), captions(2, 4)
    dec.train()
    assert not torch.allclose(dec(images, ids), dec(images, ids))
    dec.eval()
    assert torch.equal(dec(images, ids), dec(images, ids))


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown conditioning 'post'.*pre, init, par, merge"):
        CaptionDecoder(V, conditioning="post")
    with pytest.raises(ValueError, match="vocab_size"):
        CaptionDecoder(3)

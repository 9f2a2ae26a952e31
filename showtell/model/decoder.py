"""LSTM caption decoder of Show and Tell (Vinyals et al. 2015), with the image-conditioning variants of
Tanti et al. 2018 ("Where to put the image in an image caption generator").

Follows the paper / im2txt (``conditioning="pre"``, the default):
- the image embedding is fed to the same LSTM once at t=-1, its output is dropped and only the state kept;
  then ``<start> w1..wn`` goes in and ``w1..wn <end>`` is predicted (teacher forcing; the caller's loss
  masks the pads);
- word embedding 512, one LSTM layer with 512 units, dropout 0.3 on LSTM inputs and outputs, output
  projection Linear(H, V), uniform(-0.08, 0.08) initialisation.

Deviations / additions:
- ``conditioning`` "init" (image -> initial state), "par" (image next to every word) and "merge" (image joined
  with the LSTM output), for the Tanti et al. comparison; ``num_layers`` > 1 adds dropout between layers;
- the uniform init covers every parameter, biases included (im2txt/TensorFlow zero-initialises the LSTM bias
  and adds a forget-gate bias of 1 at run time); ``uniform_init=None`` keeps PyTorch's defaults;
- dropout is one module used on the image embedding, word embeddings and LSTM outputs (im2txt: the dropout
  wrapper of its LSTM cell, which also sees the image at t=-1).

Decoding (greedy, beam search) lives in ``showtell.model.decoding`` and uses ``init_state``, ``step``, ``select``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch
from torch import Tensor, nn

Conditioning = Literal["pre", "init", "par", "merge"]  # where the image enters (typed for the CLI)
CONDITIONING = get_args(Conditioning)


class DecoderState(NamedTuple):
    """Recurrent state for step-by-step decoding; N = batch (images x beams)."""

    h: Tensor  # (num_layers, N, H)
    c: Tensor  # (num_layers, N, H)
    image: Tensor  # (N, E) image embedding (after dropout), used at every step by "par" and "merge"


class CaptionDecoder(nn.Module):
    """Image embedding (B, E) + caption ids (B, T) -> next-word logits (B, T, V)."""

    def __init__(self, vocab_size: int, embed_size: int = 512, hidden_size: int = 512, num_layers: int = 1,
                 dropout: float = 0.3, conditioning: str = "pre", uniform_init: float | None = 0.08):
        super().__init__()
        if conditioning not in CONDITIONING:
            raise ValueError(f"unknown conditioning {conditioning!r}; choose from: {', '.join(CONDITIONING)}")
        if vocab_size < 5:
            raise ValueError(f"vocab_size must count the 4 special tokens plus words, got {vocab_size}")
        self.vocab_size, self.embed_size, self.hidden_size = vocab_size, embed_size, hidden_size
        self.num_layers, self.conditioning = num_layers, conditioning
        self.embedding = nn.Embedding(vocab_size, embed_size)
        self.dropout = nn.Dropout(dropout)
        lstm_input = 2 * embed_size if conditioning == "par" else embed_size
        self.lstm = nn.LSTM(lstm_input, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        if conditioning == "init":
            # h0 = tanh(W_h v) (an LSTM's h is a tanh output, in (-1, 1)); c0 = W_c v (the cell is unbounded).
            self.init_h = nn.Linear(embed_size, num_layers * hidden_size)
            self.init_c = nn.Linear(embed_size, num_layers * hidden_size)
        if conditioning == "merge":
            # Tanti et al.: concatenate image and LSTM output, then the output layer; a Linear(H + E, H)
            # keeps the output projection Linear(H, V) the same in every mode.
            self.merge = nn.Linear(hidden_size + embed_size, hidden_size)
        self.output = nn.Linear(hidden_size, vocab_size)
        if uniform_init is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -uniform_init, uniform_init)

    # ------------------------------------------------------------------------------------------ training

    def forward(self, image_embeds: Tensor, captions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Teacher forcing. captions (B, T) = ``<start> w1..wn`` (pads after) -> logits (B, T, V);
        ``logits[:, t]`` predicts token t+1 of the caption, i.e. ``w1..wn <end>``.

        ``mask`` (B, T) bool, true where the predicted token is a real one: only those positions go through
        the output (and merge) layer, and the result is (M, V) for the M true positions in row-major order
        (``logits[mask]`` of the full result, without computing the pads).

        Right padding needs no packing: the LSTM is unidirectional, so pads after a caption's end never
        influence its earlier outputs.
        """
        image = self.dropout(image_embeds)  # (B, E)
        words = self.dropout(self.embedding(captions))  # (B, T, E)
        if self.conditioning == "pre":
            # One LSTM call over [image, <start>, w1, ...] (cuDNN-friendly); drop the image step's output.
            out, _ = self.lstm(torch.cat([image.unsqueeze(1), words], dim=1))  # (B, 1 + T, H)
            out = out[:, 1:]  # (B, T, H)
        else:
            out, _ = self.lstm(self._inputs(words, image), self._initial_state(image))  # (B, T, H)
        if mask is None:
            return self._logits(out, image.unsqueeze(1).expand(-1, out.shape[1], -1))  # (B, T, V)
        rows = mask.nonzero(as_tuple=True)[0]  # (M,) the caption of each real position
        return self._logits(out[mask], image[rows])  # (M, V)

    # ------------------------------------------------------------------------------------------ decoding

    def init_state(self, image_embeds: Tensor) -> DecoderState:
        """State before the ``<start>`` token for N images (N, E)."""
        image = self.dropout(image_embeds)  # (N, E)
        if self.conditioning == "pre":
            _, (h, c) = self.lstm(image.unsqueeze(1))  # the t=-1 step; output dropped
        else:
            h, c = self._initial_state(image) or self._zero_state(image)
        return DecoderState(h, c, image)

    def step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One step: tokens (N,) -> logits (N, V) for the next token, new state."""
        words = self.dropout(self.embedding(tokens)).unsqueeze(1)  # (N, 1, E)
        out, (h, c) = self.lstm(self._inputs(words, state.image), (state.h, state.c))  # (N, 1, H)
        return self._logits(out.squeeze(1), state.image), DecoderState(h, c, state.image)  # (N, V)

    @staticmethod
    def select(state: DecoderState, index: Tensor) -> DecoderState:
        """Gather states along the batch dimension (beam search): new[i] = old[index[i]]."""
        return DecoderState(state.h.index_select(1, index), state.c.index_select(1, index),
                            state.image.index_select(0, index))

    # ------------------------------------------------------------------------------------------- helpers

    def _initial_state(self, image: Tensor) -> tuple[Tensor, Tensor] | None:
        """(h0, c0) of shape (num_layers, N, H) for "init"; None (zeros) for the other modes."""
        if self.conditioning != "init":
            return None
        shape = (image.shape[0], self.num_layers, self.hidden_size)
        h0 = torch.tanh(self.init_h(image)).view(shape).transpose(0, 1).contiguous()
        c0 = self.init_c(image).view(shape).transpose(0, 1).contiguous()
        return h0, c0

    def _zero_state(self, image: Tensor) -> tuple[Tensor, Tensor]:
        zeros = image.new_zeros(self.num_layers, image.shape[0], self.hidden_size)
        return zeros, zeros.clone()

    def _inputs(self, words: Tensor, image: Tensor) -> Tensor:
        """LSTM inputs (N, T, E) or, for "par", (N, T, 2E) with the image next to every word."""
        if self.conditioning != "par":
            return words
        return torch.cat([words, image.unsqueeze(1).expand(-1, words.shape[1], -1)], dim=-1)

    def _logits(self, out: Tensor, image: Tensor) -> Tensor:
        """LSTM outputs (..., H) and the image (..., E) of each -> logits (..., V); "merge" joins the image."""
        out = self.dropout(out)
        if self.conditioning == "merge":
            out = self.merge(torch.cat([out, image], dim=-1))  # (..., H)
        return self.output(out)

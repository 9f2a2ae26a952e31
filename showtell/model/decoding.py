"""Free-running caption decoding: greedy and beam search, the one place used by validation, testing,
evaluation and the caption command; and sampling, for self-critical training (``showtell.training.module``).

Both work on any decoder with ``init_state(image_embeds)``, ``step(tokens, state) -> (logits, state)`` and
``select(state, index)`` (``showtell.model.decoder.CaptionDecoder``), batched over images and beams as tensors:
the only Python loop is over time steps.

Follows im2txt: beam 3, at most 20 words, no length normalisation by default; finished captions (those that
emitted ``<end>``) are kept in a per-image pool and compete with the live beams; when no caption finishes
within ``max_len`` words, the best unfinished ones are returned.

Rules (all decoders here):
- ``max_len`` is the maximum number of words, ``<end>`` not counted. After ``max_len`` words one more step
  is run: a caption whose ``<end>`` is chosen there (greedy: the most likely token; beam: among the top K
  candidates) is finished, the others are returned unfinished (``<end>`` is never forced).
- ``<pad>`` and ``<start>`` are never emitted (their logits are masked to -inf).
- A caption's log-probability is the sum of ``log_softmax`` (in float32) of its words and, when finished,
  of its ``<end>`` token.
- Ranking score with ``length_penalty`` alpha: ``log_prob / length ** alpha`` where ``length`` is the
  number of scored tokens (words, plus 1 for ``<end>`` when finished). alpha = 0 ranks by log-probability
  (im2txt).
- Finished captions always rank above unfinished ones.
- Beam search keeps the K best unfinished hypotheses each step by log-probability (chosen among the top 2K
  of the K x V candidates, so an ``<end>`` never takes a live slot); an ``<end>`` candidate joins the pool only when it
  is within the top K (so beam size 1 is exactly greedy). It stops early once, for every image, the pool's
  ``top_k`` captions score at least ``best live log_prob / (max_len + 1) ** alpha``, an upper bound on what
  any live beam can still reach (log-probabilities only decrease).
- Decoding runs under ``torch.no_grad`` and does not change the decoder's train/eval mode (callers put it
  in eval mode; in train mode dropout is active).

Sampling (``sample_captions``) follows the same rules for ``max_len``, ``<end>`` and the never-emitted tokens,
but draws each word from the softmax (multinomial) instead of taking the best, for K samples per image at
once, and runs *with* gradients: its log-probabilities are the policy's, for REINFORCE. A sample's
log-probability is the sum of the full ``log_softmax`` of its sampled tokens (``<pad>``/``<start>`` are only
excluded from the draw, not renormalised away), so it equals the teacher-forced log-probability of the same
caption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from showtell.vocab import END_ID, PAD_ID, START_ID, Vocabulary


class StepDecoder(Protocol):
    """What decoding needs from a decoder (``CaptionDecoder`` satisfies it)."""

    def init_state(self, image_embeds: Tensor) -> Any: ...
    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...
    def select(self, state: Any, index: Tensor) -> Any: ...


@dataclass
class Decoded:
    """K captions per image, best first. B = images, K = captions per image, L = max_len."""

    tokens: Tensor  # (B, K, L) long: word ids without <start>/<end>, padded with PAD_ID
    scores: Tensor  # (B, K) ranking score: log_probs / length ** length_penalty (= log_probs when alpha = 0)
    lengths: Tensor  # (B, K) long: words per caption
    finished: Tensor  # (B, K) bool: the caption ended with <end> (its log-prob includes <end>)
    log_probs: Tensor  # (B, K) float32: total log-probability of the caption (words + <end> if finished)

    @property
    def best(self) -> Tensor:
        """The best caption of each image: (B, L)."""
        return self.tokens[:, 0]


@dataclass
class Sampled:
    """K sampled captions per image, in drawing order (not ranked). B = images, K = samples, L = max_len."""

    tokens: Tensor  # (B, K, L) long: word ids without <start>/<end>, padded with PAD_ID
    lengths: Tensor  # (B, K) long: words per caption
    finished: Tensor  # (B, K) bool: the caption ended with <end> (its log-prob includes <end>)
    log_probs: Tensor  # (B, K) float32, differentiable: sum of log p of its words (+ <end> if finished)


def decode(decoder: StepDecoder, image_embeds: Tensor, beam_size: int = 1, max_len: int = 20,
           length_penalty: float = 0.0, top_k: int = 1) -> Decoded:
    """Greedy when ``beam_size == 1 and top_k == 1`` (``length_penalty`` then has no effect), beam search
    otherwise."""
    if beam_size == 1 and top_k == 1:
        _check(beam_size, max_len, length_penalty, top_k)
        return greedy_decode(decoder, image_embeds, max_len)
    return beam_search(decoder, image_embeds, beam_size, max_len, length_penalty, top_k)


def captions_to_text(tokens: Tensor, vocab: Vocabulary) -> list[str]:
    """Word ids (N, L) -> N strings, via ``Vocabulary.decode`` (stops at <end>, drops <pad>/<start>)."""
    return [" ".join(vocab.decode(row)) for row in tokens.tolist()]


def _check(beam_size: int, max_len: int, length_penalty: float, top_k: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= top_k <= beam_size:
        raise ValueError(f"top_k must be between 1 and beam_size ({beam_size}), got {top_k}")
    if max_len < 0:
        raise ValueError(f"max_len must be >= 0 words, got {max_len}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")


def _log_probs(logits: Tensor) -> Tensor:
    """Float32 log-softmax (also under bf16 autocast) with <pad> and <start> masked to -inf: (N, V)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    logp[:, PAD_ID] = float("-inf")
    logp[:, START_ID] = float("-inf")
    return logp


def _rollout(decoder: StepDecoder, image_embeds: Tensor, max_len: int,
             pick: Callable[[Tensor], tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One word per step for N captions at once until every one has said ``<end>`` or has ``max_len`` words.

    ``pick(logits)`` chooses each caption's next token and its log-probability (N,), (N,).
    Returns words (N, max_len), lengths (N,), finished (N,) and the summed log-probabilities through ``<end>``.
    """
    N, device = image_embeds.shape[0], image_embeds.device
    state = decoder.init_state(image_embeds)
    tokens = torch.full((N,), START_ID, dtype=torch.long, device=device)
    words = torch.full((N, max_len), PAD_ID, dtype=torch.long, device=device)
    log_probs = torch.zeros(N, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    for t in range(max_len + 1):
        logits, state = decoder.step(tokens, state)
        tokens, token_logp = pick(logits)  # (N,), (N,)
        alive = ~finished
        ends = alive & (tokens == END_ID)
        grows = alive & ~ends & (t < max_len)  # at t == max_len a non-<end> word is not taken: unfinished
        log_probs = log_probs + torch.where(ends | grows, token_logp, torch.zeros_like(token_logp))
        if t < max_len:
            words[:, t] = torch.where(grows, tokens, PAD_ID)
        lengths += grows.long()
        finished |= ends
        if bool(finished.all()):
            break
    return words, lengths, finished, log_probs


@torch.no_grad()
def greedy_decode(decoder: StepDecoder, image_embeds: Tensor, max_len: int = 20) -> Decoded:
    """Most likely next word at every step, for B images at once; K = 1."""
    _check(1, max_len, 0.0, 1)

    def most_likely(logits: Tensor) -> tuple[Tensor, Tensor]:
        best_logp, tokens = _log_probs(logits).max(dim=-1)
        return tokens, best_logp

    words, lengths, finished, log_probs = _rollout(decoder, image_embeds, max_len, most_likely)
    log_probs = log_probs.unsqueeze(1)  # (B, 1)
    return Decoded(tokens=words.unsqueeze(1), scores=log_probs.clone(), lengths=lengths.unsqueeze(1),
                   finished=finished.unsqueeze(1), log_probs=log_probs)


def sample_captions(decoder: StepDecoder, image_embeds: Tensor, num_samples: int = 5, max_len: int = 20,
                    generator: torch.Generator | None = None) -> Sampled:
    """Draw ``num_samples`` captions per image from the model's softmax, all B x K at once, with gradients.

    The samples of one image are adjacent rows (image i's are rows i*K .. i*K+K-1 before the final view). Runs
    in the decoder's current mode (dropout active in train mode, as SCST implementations sample). The
    log-probabilities are those of the full softmax (``<pad>`` and ``<start>`` are never drawn).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    _check(1, max_len, 0.0, 1)
    B, K = image_embeds.shape[0], num_samples

    def draw(logits: Tensor) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V) with gradients, float32 under bf16 autocast
        probs = logp.detach().exp()
        probs[:, PAD_ID] = 0.0  # never drawn; the log-probabilities stay those of the full softmax
        probs[:, START_ID] = 0.0
        tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (N,)
        return tokens, logp.gather(1, tokens.unsqueeze(1)).squeeze(1)

    words, lengths, finished, log_probs = _rollout(decoder, image_embeds.repeat_interleave(K, dim=0), max_len,
                                                   draw)
    return Sampled(tokens=words.view(B, K, max_len), lengths=lengths.view(B, K), finished=finished.view(B, K),
                   log_probs=log_probs.view(B, K))


def _rank(log_probs: Tensor, lengths: Tensor, alpha: float) -> Tensor:
    """Ranking score ``log_probs / lengths ** alpha`` (lengths = scored tokens, at least 1)."""
    if alpha == 0:
        return log_probs
    return log_probs / lengths.clamp(min=1).float() ** alpha


@torch.no_grad()
def beam_search(decoder: StepDecoder, image_embeds: Tensor, beam_size: int = 3, max_len: int = 20,
                length_penalty: float = 0.0, top_k: int = 1) -> Decoded:
    """Beam search over B images x K beams at once; returns the ``top_k`` best distinct captions per image.

    If fewer than ``top_k`` captions exist at all (tiny vocabularies), the missing ones are empty with
    score -inf.
    """
    _check(beam_size, max_len, length_penalty, top_k)
    B, K, P, device = image_embeds.shape[0], beam_size, top_k, image_embeds.device
    batch = torch.arange(B, device=device)
    state = decoder.init_state(image_embeds)
    state = decoder.select(state, batch.repeat_interleave(K))  # (B*K, ...)
    tokens = torch.full((B * K,), START_ID, dtype=torch.long, device=device)

    # Live beams: words so far and log-prob. All beams start equal: only beam 0 is live at first.
    live_words = torch.full((B, K, max_len), PAD_ID, dtype=torch.long, device=device)
    live_logp = torch.zeros(B, K, device=device)
    live_logp[:, 1:] = float("-inf")
    # Pool of finished captions per image (rank -inf = empty slot).
    pool_words = torch.full((B, P, max_len), PAD_ID, dtype=torch.long, device=device)
    pool_logp = torch.full((B, P), float("-inf"), device=device)
    pool_rank = torch.full((B, P), float("-inf"), device=device)
    pool_len = torch.zeros(B, P, dtype=torch.long, device=device)

    n_words = 0  # words in each live beam
    for t in range(max_len + 1):  # t == n_words at the start of a step
        logits, state = decoder.step(tokens, state)
        logp = _log_probs(logits).view(B, K, -1)  # (B, K, V)
        V = logp.shape[-1]
        cand_logp, cand = (live_logp.unsqueeze(-1) + logp).view(B, K * V).topk(min(2 * K, K * V), dim=1)
        cand_beam, cand_token = cand // V, cand % V  # (B, 2K)

        # <end> candidates within the top K join the pool.
        is_end = cand_token == END_ID
        ends = is_end & torch.isfinite(cand_logp)
        ends[:, K:] = False
        end_len = torch.full_like(cand_logp, t + 1)
        end_rank = torch.where(ends, _rank(cand_logp, end_len, length_penalty), float("-inf"))
        all_rank = torch.cat([pool_rank, end_rank], dim=1)  # (B, P + 2K)
        pool_rank, keep = all_rank.topk(P, dim=1)  # (B, P)
        all_words = torch.cat([pool_words, live_words[batch[:, None], cand_beam]], dim=1)
        pool_words = all_words[batch[:, None], keep]
        pool_logp = torch.cat([pool_logp, cand_logp], dim=1).gather(1, keep)
        pool_len = torch.cat([pool_len, torch.full_like(cand, t)], dim=1).gather(1, keep)
        if t == max_len:  # no more words: beams whose <end> joined the pool are not also kept unfinished
            pooled = torch.zeros(B, K, dtype=torch.long, device=device).scatter_add_(
                1, cand_beam[:, :K], ends[:, :K].long())  # (B, K) how many <end>s each beam gave the pool
            live_logp = live_logp.masked_fill(pooled > 0, float("-inf"))
            break

        # The K best non-<end> candidates continue (a stable sort moves <end>s behind, keeping score order).
        order = torch.sort(is_end.int(), dim=1, stable=True).indices[:, :K]  # (B, K)
        parent, new_token = cand_beam.gather(1, order), cand_token.gather(1, order)  # (B, K)
        live_logp = cand_logp.gather(1, order)
        live_words = live_words[batch[:, None], parent]
        live_words[:, :, t] = new_token
        n_words = t + 1
        state = decoder.select(state, (parent + batch[:, None] * K).view(-1))
        tokens = new_token.view(-1)

        # Stop when no live beam can still beat any of the top_k finished captions of any image.
        bound = live_logp.max(dim=1).values / float(max_len + 1) ** length_penalty  # (B,)
        if bool((pool_rank.min(dim=1).values >= bound).all()):
            break

    # Unfinished live beams rank after every finished caption (fallback when too few finished).
    live_len = torch.full((B, K), n_words, dtype=torch.long, device=device)
    live_rank = _rank(live_logp, live_len, length_penalty)
    rank = torch.cat([pool_rank, live_rank], dim=1)  # (B, P + K)
    tier = torch.cat([torch.isfinite(pool_rank).int() * 2, torch.isfinite(live_rank).int()], dim=1)
    by_rank = rank.sort(dim=1, descending=True, stable=True).indices
    by_tier = tier.gather(1, by_rank).sort(dim=1, descending=True, stable=True).indices
    pick = by_rank.gather(1, by_tier)[:, :P]  # (B, P): finished first, then unfinished, each by rank
    valid = tier.gather(1, pick) > 0
    words = torch.cat([pool_words, live_words], dim=1)[batch[:, None], pick]
    lengths = torch.cat([pool_len, live_len], dim=1).gather(1, pick)
    log_probs = torch.cat([pool_logp, live_logp], dim=1).gather(1, pick)
    return Decoded(
        tokens=words.masked_fill(~valid.unsqueeze(-1), PAD_ID),
        scores=rank.gather(1, pick),
        lengths=lengths.masked_fill(~valid, 0),
        finished=tier.gather(1, pick) == 2,
        log_probs=log_probs.masked_fill(~valid, float("-inf")),
    )


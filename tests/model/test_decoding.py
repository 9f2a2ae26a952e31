"""Greedy and beam search: exactness on hand-built models, consistency with teacher forcing, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor

from showtell.model.decoder import CONDITIONING, CaptionDecoder
from showtell.model.decoding import Decoded, beam_search, captions_to_text, decode, greedy_decode
from showtell.vocab import END_ID, PAD_ID, START_ID, Vocabulary

A, B_, C, D, G = 4, 5, 6, 7, 8  # word ids of the hand-built models


class MarkovDecoder:
    """Hand-built decoder: the next-token distribution depends only on the previous token.

    ``tables`` maps a model index to {previous token: {next token: probability}}; each image embedding is
    a (1,) tensor holding the index of its table, so wrong beam bookkeeping (``select``) shows up.
    """

    def __init__(self, *tables: dict[int, dict[int, float]], vocab_size: int = 9):
        self.log_probs = torch.full((len(tables), vocab_size, vocab_size), -1e9)
        for m, table in enumerate(tables):
            for prev, row in table.items():
                assert abs(sum(row.values()) - 1) < 1e-9
                for token, p in row.items():
                    self.log_probs[m, prev, token] = math.log(p)

    def init_state(self, image_embeds: Tensor) -> Tensor:
        return image_embeds[:, 0].long()  # (N,) table index

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        return self.log_probs[state, tokens], state

    @staticmethod
    def select(state: Tensor, index: Tensor) -> Tensor:
        return state.index_select(0, index)


def images_for(*table_index: int) -> Tensor:
    return torch.tensor(table_index, dtype=torch.float).unsqueeze(1)  # (B, 1)


def words_of(decoded: Decoded, b: int, k: int = 0) -> list[int]:
    return decoded.tokens[b, k, : decoded.lengths[b, k]].tolist()


# Greedy takes A (0.6) then C: 0.6 * 0.34 = 0.204; the best caption is B_ alone: 0.4.
GREEDY_TRAP = {START_ID: {A: 0.6, B_: 0.4}, A: {C: 0.34, D: 0.33, END_ID: 0.33}, B_: {END_ID: 1.0},
               C: {END_ID: 1.0}, D: {END_ID: 1.0}}
# Never emits <end>; best 3-word caption: A B_ B_ = 0.7 * 0.55 * 0.9.
NO_END = {START_ID: {A: 0.7, B_: 0.3}, A: {A: 0.45, B_: 0.55}, B_: {B_: 0.9, A: 0.1}}
# Log-prob prefers "A" (0.33 vs 0.328); per token "B_ C D" wins (length normalisation).
SHORT_VS_LONG = {START_ID: {A: 0.55, B_: 0.45}, A: {END_ID: 0.6, G: 0.4}, G: {END_ID: 1.0},
                 B_: {C: 0.9, END_ID: 0.1}, C: {D: 0.9, END_ID: 0.1}, D: {END_ID: 0.9, G: 0.1}}


def random_decoder(conditioning: str = "pre", vocab_size: int = 15, end_bias: float | None = None, seed: int = 0,
                   max_len: int = 6) -> CaptionDecoder:
    """Small random decoder in eval mode. Its <end> logit is shifted by ``end_bias``; by default by the
    bias that makes about half of 32 probe images' greedy captions end within ``max_len`` words, so tests
    see both finished and cut-off captions of varied lengths."""
    torch.manual_seed(seed)
    dec = CaptionDecoder(vocab_size, 8, 16, num_layers=1, dropout=0.3, conditioning=conditioning,
                         uniform_init=0.5).eval()
    base = dec.output.bias[END_ID].item()
    if end_bias is None:
        probe = torch.randn(32, 8, generator=torch.Generator().manual_seed(seed))
        rates = {}
        for bias in torch.arange(-2.0, 4.0, 0.1).tolist():
            with torch.no_grad():
                dec.output.bias[END_ID] = base + bias
            rates[bias] = greedy_decode(dec, probe, max_len).finished.float().mean().item()
        end_bias = min(rates, key=lambda b: abs(rates[b] - 0.5))
    with torch.no_grad():
        dec.output.bias[END_ID] = base + end_bias
    return dec


def teacher_forced_log_prob(dec: CaptionDecoder, image: Tensor, words: list[int], finished: bool) -> float:
    """Sum of log_softmax over w1..wn (and <end> when finished), from the training forward."""
    inputs = [START_ID, *words] if finished else [START_ID, *words][:-1]
    targets = [*words, END_ID] if finished else words
    if not targets:
        return 0.0
    logp = torch.log_softmax(dec(image[None], torch.tensor([inputs])), dim=-1)[0]  # (T, V)
    return logp.gather(1, torch.tensor(targets)[:, None]).sum().item()


# ------------------------------------------------------------------------------------------ hand-built models


def test_beam_search_finds_the_best_caption_where_greedy_does_not():
    dec, images = MarkovDecoder(GREEDY_TRAP), images_for(0)
    greedy = greedy_decode(dec, images, max_len=5)
    assert words_of(greedy, 0) == [A, C] and bool(greedy.finished[0, 0])
    assert greedy.log_probs[0, 0].item() == pytest.approx(math.log(0.6 * 0.34), abs=1e-5)
    beam = beam_search(dec, images, beam_size=2, max_len=5)
    assert words_of(beam, 0) == [B_] and bool(beam.finished[0, 0])
    assert beam.scores[0, 0].item() == pytest.approx(math.log(0.4), abs=1e-5)


def test_fallback_to_best_unfinished_caption():
    dec, images = MarkovDecoder(NO_END), images_for(0)
    for result in (greedy_decode(dec, images, max_len=3), beam_search(dec, images, beam_size=3, max_len=3)):
        assert words_of(result, 0) == [A, B_, B_]
        assert not bool(result.finished[0, 0]) and result.lengths[0, 0] == 3
        assert result.log_probs[0, 0].item() == pytest.approx(math.log(0.7 * 0.55 * 0.9), abs=1e-5)
    top = beam_search(dec, images, beam_size=4, max_len=3, top_k=4)
    every = {seq: math.log(0.7 if seq[0] == A else 0.3) + sum(math.log(NO_END[p][n]) for p, n in zip(seq, seq[1:]))
             for seq in itertools.product([A, B_], repeat=3)}
    best4 = sorted(every.items(), key=lambda kv: -kv[1])[:4]
    assert [tuple(words_of(top, 0, k)) for k in range(4)] == [seq for seq, _ in best4]
    assert top.log_probs[0].tolist() == pytest.approx([lp for _, lp in best4], abs=1e-5)


def test_never_emits_pad_or_start():
    likes_specials = {START_ID: {PAD_ID: 0.5, START_ID: 0.3, A: 0.15, END_ID: 0.05},
                      A: {PAD_ID: 0.2, START_ID: 0.1, END_ID: 0.7}}
    dec, images = MarkovDecoder(likes_specials), images_for(0)
    for result in (greedy_decode(dec, images, 4), beam_search(dec, images, 3, 4, top_k=2)):
        assert words_of(result, 0) == [A] and bool(result.finished[0, 0])
        assert result.log_probs[0, 0].item() == pytest.approx(math.log(0.15 * 0.7), abs=1e-5)
        assert not (result.tokens == START_ID).any()
    top2 = beam_search(dec, images, 3, 4, top_k=2)
    assert words_of(top2, 0, 1) == [] and bool(top2.finished[0, 1])  # "<start> <end>": the empty caption


def test_length_penalty_changes_the_ranking_as_documented():
    dec, images = MarkovDecoder(SHORT_VS_LONG), images_for(0)
    plain = beam_search(dec, images, beam_size=3, max_len=5)
    assert words_of(plain, 0) == [A]
    assert plain.scores[0, 0].item() == pytest.approx(math.log(0.55 * 0.6), abs=1e-5)
    normalised = beam_search(dec, images, beam_size=3, max_len=5, length_penalty=1.0)
    assert words_of(normalised, 0) == [B_, C, D]
    log_prob = math.log(0.45 * 0.9 * 0.9 * 0.9)
    assert normalised.log_probs[0, 0].item() == pytest.approx(log_prob, abs=1e-5)
    assert normalised.scores[0, 0].item() == pytest.approx(log_prob / 4**1.0, abs=1e-5)  # 3 words + <end>


def test_top_k_keeps_searching_until_every_slot_is_settled():
    # After step 1 the pool holds "B_" (0.4) and beats every live beam, but the second slot is still open.
    result = beam_search(MarkovDecoder(GREEDY_TRAP), images_for(0), beam_size=3, max_len=5, top_k=2)
    assert [words_of(result, 0, k) for k in range(2)] == [[B_], [A, C]]
    assert result.finished.all()
    assert result.log_probs[0].tolist() == pytest.approx([math.log(0.4), math.log(0.6 * 0.34)], abs=1e-5)


def test_top_k_fills_with_distinct_unfinished_captions():
    # At the last step A's <end> joins the pool; A must not come back as an unfinished caption too.
    table = {START_ID: {A: 0.6, B_: 0.4}, A: {END_ID: 0.9, C: 0.1}, B_: {C: 1.0}}
    result = beam_search(MarkovDecoder(table), images_for(0), beam_size=2, max_len=1, top_k=2)
    assert [words_of(result, 0, k) for k in range(2)] == [[A], [B_]]
    assert result.finished[0].tolist() == [True, False]
    assert result.log_probs[0].tolist() == pytest.approx([math.log(0.54), math.log(0.4)], abs=1e-5)


def test_batch_of_different_models_uses_the_right_beams():
    dec = MarkovDecoder(GREEDY_TRAP, NO_END, SHORT_VS_LONG)
    both = beam_search(dec, images_for(2, 0, 1, 0), beam_size=3, max_len=3)
    assert [words_of(both, b) for b in range(4)] == [[A], [B_], [A, B_, B_], [B_]]
    assert both.finished[:, 0].tolist() == [True, True, False, True]


# ------------------------------------------------------------------------------------------- random decoders


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_beam_size_one_is_exactly_greedy(conditioning):
    dec, images = random_decoder(conditioning), torch.randn(16, 8)
    greedy = greedy_decode(dec, images, max_len=6)
    beam = beam_search(dec, images, beam_size=1, max_len=6)
    assert 0 < greedy.finished.sum() < 16  # both finished and cut-off captions are covered
    for field in ("tokens", "scores", "log_probs", "lengths", "finished"):
        assert torch.equal(getattr(greedy, field), getattr(beam, field)), field
    assert torch.equal(decode(dec, images, beam_size=1, max_len=6).tokens, greedy.tokens)


@pytest.mark.parametrize("conditioning", CONDITIONING)
def test_scores_are_teacher_forced_log_probs(conditioning):
    dec, images = random_decoder(conditioning, seed=1), torch.randn(4, 8)
    result = beam_search(dec, images, beam_size=4, max_len=5, top_k=3)
    assert torch.equal(result.scores, result.log_probs)  # no length penalty
    for b, k in itertools.product(range(4), range(3)):
        expected = teacher_forced_log_prob(dec, images[b], words_of(result, b, k), bool(result.finished[b, k]))
        assert result.log_probs[b, k].item() == pytest.approx(expected, abs=1e-4)
    alpha = 0.7
    normalised = beam_search(dec, images, beam_size=4, max_len=5, top_k=3, length_penalty=alpha)
    tokens_scored = normalised.lengths + normalised.finished.long()
    assert torch.allclose(normalised.scores, normalised.log_probs / tokens_scored.float() ** alpha)


def test_exhaustive_beam_matches_brute_force():
    # With a beam wider than all candidates, beam search is exhaustive: it must return the true top captions.
    V, max_len = 7, 3
    dec, image = random_decoder(vocab_size=V, end_bias=0.5, seed=2), torch.randn(1, 8)
    words = [t for t in range(V) if t not in (PAD_ID, START_ID, END_ID)]
    finished = [list(seq) for n in range(max_len + 1) for seq in itertools.product(words, repeat=n)]
    truth = sorted(((teacher_forced_log_prob(dec, image[0], seq, True), seq) for seq in finished), reverse=True)
    result = beam_search(dec, image, beam_size=100, max_len=max_len, top_k=5)
    assert [words_of(result, 0, k) for k in range(5)] == [seq for _, seq in truth[:5]]
    assert result.log_probs[0].tolist() == pytest.approx([lp for lp, _ in truth[:5]], abs=1e-4)


def test_top_k_sorted_distinct_and_finished_first():
    dec, images = random_decoder(seed=3, end_bias=0.0), torch.randn(6, 8)
    result = beam_search(dec, images, beam_size=5, max_len=4, top_k=5)
    for b in range(6):
        captions = [tuple(words_of(result, b, k)) for k in range(5)]
        assert len(set(captions)) == 5
        flags = result.finished[b].tolist()
        assert flags == sorted(flags, reverse=True)  # finished captions come first
        for group in (True, False):
            scores = [s for s, f in zip(result.scores[b].tolist(), flags) if f == group]
            assert scores == sorted(scores, reverse=True)
    assert result.finished.any() and not result.finished.all()


def test_batching_does_not_change_answers():
    dec, images = random_decoder(seed=4), torch.randn(5, 8)
    batched = beam_search(dec, images, beam_size=3, max_len=6, top_k=2)
    for b in range(5):
        alone = beam_search(dec, images[b : b + 1], beam_size=3, max_len=6, top_k=2)
        assert torch.equal(alone.tokens[0], batched.tokens[b])
        assert torch.equal(alone.finished[0], batched.finished[b])
        assert torch.allclose(alone.scores[0], batched.scores[b], atol=1e-5)
    greedy = greedy_decode(dec, images, max_len=6)
    for b in range(5):
        assert torch.equal(greedy_decode(dec, images[b : b + 1], max_len=6).tokens[0], greedy.tokens[b])


@pytest.mark.parametrize("max_len", [0, 1, 4])
def test_max_len_and_padding(max_len):
    dec, images = random_decoder(seed=5, end_bias=-1.0), torch.randn(8, 8)
    for result in (greedy_decode(dec, images, max_len), beam_search(dec, images, 3, max_len, top_k=3)):
        K = result.tokens.shape[1]
        assert result.tokens.shape == (8, K, max_len) and result.tokens.dtype == torch.long
        assert (result.lengths <= max_len).all()
        positions = torch.arange(max_len)
        inside = positions < result.lengths[..., None]
        assert (result.tokens[~inside] == PAD_ID).all()
        assert (result.tokens[inside] > END_ID).all()  # words only: no <pad>, <start> or <end>
        unfinished = ~result.finished
        assert (result.lengths[unfinished] == max_len).all()  # only cut-off captions are unfinished


def test_decoding_keeps_mode_and_needs_no_grad():
    dec, images = random_decoder(), torch.randn(3, 8, requires_grad=True)
    dec.train()
    result = decode(dec, images, beam_size=2, max_len=3)
    assert dec.training and not result.scores.requires_grad
    dec.eval()
    decode(dec, images, beam_size=2, max_len=3)
    assert not dec.training


def test_runs_under_bf16_autocast():
    dec, images = random_decoder(seed=6), torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        greedy = greedy_decode(dec, images, max_len=5)
        beam = beam_search(dec, images, beam_size=1, max_len=5)
        wide = beam_search(dec, images, beam_size=3, max_len=5, top_k=2)
    assert greedy.scores.dtype == wide.scores.dtype == torch.float32
    assert torch.equal(greedy.tokens, beam.tokens) and torch.equal(greedy.scores, beam.scores)
    assert torch.isfinite(wide.scores).all()


def test_tiny_decoder_overfits_a_few_pairs_to_exact_greedy_captions():
    torch.manual_seed(0)
    V, E = 12, 16
    dec = CaptionDecoder(V, E, 32, dropout=0.0)
    images = torch.randn(4, E)
    targets = [[4, 5, 6], [7, 8], [9, 10, 11, 4, 5], [6]]
    T = max(len(t) for t in targets) + 2
    ids = torch.full((4, T), PAD_ID)
    for row, words in enumerate(targets):
        ids[row, : len(words) + 2] = torch.tensor([START_ID, *words, END_ID])
    opt = torch.optim.Adam(dec.parameters(), lr=2e-2)
    for _ in range(80):
        logits = dec(images, ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1),
                                                 ignore_index=PAD_ID)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    for result in (greedy_decode(dec, images, max_len=8), beam_search(dec, images, beam_size=3, max_len=8)):
        assert [words_of(result, b) for b in range(4)] == targets
        assert result.finished.all()


def test_captions_to_text():
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"])
    tokens = torch.tensor([[4, 5, 6, 0], [5, 0, 0, 0]])
    assert captions_to_text(tokens, vocab) == ["a dog runs", "dog"]
    result = greedy_decode(MarkovDecoder(GREEDY_TRAP, vocab_size=9), images_for(0), max_len=3)
    assert result.best.shape == (1, 3)


def test_bad_arguments():
    dec, images = random_decoder(), torch.randn(2, 8)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(dec, images, beam_size=0)
    with pytest.raises(ValueError, match="top_k"):
        decode(dec, images, beam_size=2, top_k=3)
    with pytest.raises(ValueError, match="max_len"):
        decode(dec, images, max_len=-1)
    with pytest.raises(ValueError, match="length_penalty"):
        beam_search(dec, images, length_penalty=-0.5)

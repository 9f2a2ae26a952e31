"""Self-critical sequence training (Rennie et al. 2017; Luo 2020, "A better variant of self-critical sequence
training"): for a batch of training images, K captions are sampled per image (``sample_captions``), each is
rewarded with its CIDEr-D against the image's training references (document frequencies of the training
references, ``CiderReward``), and the loss is ``-(reward - baseline) x`` the sample's summed log-probability,
averaged over samples. The baseline is the mean reward of the image's other K-1 samples (Luo 2020) or the
reward of its greedy caption (Rennie et al. 2017).

Under DDP each process samples and scores its own images against the training references (every process holds
all of them): the loss needs no reward from other processes, and DDP averages the gradients as for
cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from showtell.metrics.cider import CiderReward, DocumentFrequency
from showtell.model.decoding import greedy_decode, sample_captions
from showtell.vocab import Vocabulary

ScstBaseline = Literal["mean", "greedy"]


def self_critical_loss(log_probs: Tensor, rewards: Tensor, baseline: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """REINFORCE with a baseline: ``-(reward - baseline) * log p(sample)``, averaged over all samples.

    log_probs, rewards: (B, K) for K samples of each of B images (only ``log_probs`` carries gradients);
    baseline: (B, 1) or (B, K), e.g. the greedy caption's reward; None = for each sample, the mean reward of
    the image's other K-1 samples (Luo 2020). Returns (loss, advantages (B, K)).
    """
    K = rewards.shape[1]
    if baseline is None:
        if K < 2:
            raise ValueError("the mean-of-the-others baseline needs at least 2 samples per image")
        baseline = (rewards.sum(dim=1, keepdim=True) - rewards) / (K - 1)  # (B, K)
    advantages = (rewards - baseline).detach()  # (B, K)
    return -(advantages * log_probs).mean(), advantages


def training_reward(references: Sequence[Sequence[Sequence[str]]] | None) -> CiderReward:
    """CIDEr-D against the references of each training image (one entry per image, in training-split order),
    with the training references' document frequencies (coco-caption's evaluation counts them on the
    evaluated references instead)."""
    if references is None:
        raise ValueError("--model.scst trains on batches of images: set --data.train_per_image true "
                         "(train.py links it from --model.scst)")
    return CiderReward(references, DocumentFrequency.from_references(references))


class SelfCritical:
    """The self-critical loss of a batch of training images, given the model's decoder and vocabulary."""

    def __init__(self, reward: CiderReward, vocab: Vocabulary, samples: int, baseline: ScstBaseline, max_len: int):
        self.reward, self.vocab = reward, vocab
        self.samples, self.baseline, self.max_len = samples, baseline, max_len

    def loss(self, decoder: nn.Module, embeds: Tensor, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """embeds (B, E) of the images whose training-split indices are ``images`` (B,) -> (loss, what to log:
        mean sample reward, mean |advantage|, mean sample length in words, the greedy reward if used)."""
        B, K = len(images), self.samples
        samples = sample_captions(decoder, embeds, K, self.max_len)  # tokens (B, K, L), log_probs (B, K)
        indices = images.cpu().numpy()  # (B,)
        rewards = self._rewards(samples.tokens.flatten(0, 1), np.repeat(indices, K), embeds.device).view(B, K)
        stats = {"reward": rewards.mean(), "sample_words": samples.lengths.float().mean()}
        baseline = None  # the mean of the other samples
        if self.baseline == "greedy":
            greedy = self._greedy_tokens(decoder, embeds.detach())
            baseline = self._rewards(greedy, indices, embeds.device).unsqueeze(1)  # (B, 1)
            stats["greedy_reward"] = baseline.mean()
        loss, advantages = self_critical_loss(samples.log_probs, rewards, baseline)
        stats["advantage_abs"] = advantages.abs().mean()
        return loss, stats

    def _rewards(self, tokens: Tensor, images: np.ndarray, device: torch.device) -> Tensor:
        """CIDEr-D (N,) of captions ``tokens`` (N, L) against the training references of ``images`` (N,)."""
        hypotheses = [self.vocab.decode(row) for row in tokens.tolist()]  # rows: words, then <pad>
        return torch.from_numpy(self.reward(hypotheses, images)).to(device, torch.float32)

    def _greedy_tokens(self, decoder: nn.Module, embeds: Tensor) -> Tensor:
        """The greedy caption (B, L) of each image, without dropout (the self-critical baseline of Rennie et al.)."""
        training = decoder.training
        decoder.eval()
        try:
            return greedy_decode(decoder, embeds, self.max_len).best
        finally:
            decoder.train(training)

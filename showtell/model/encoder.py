"""Image encoder: a torchvision CNN (or ViT) without its classifier, then a Linear image embedding.

Follows Show and Tell / im2txt:
- the CNN is an ImageNet classifier whose last layer is removed; its pooled features (B, D) are mapped by one
  Linear layer without bias to the word-embedding size E (im2txt's ``image_embedding``, the paper's W_I);
- the CNN is frozen by default (im2txt trains the LSTM first and fine-tunes the CNN only in a second phase,
  "lessons learned" +1 BLEU-4); ``unfreeze()`` starts that second phase.

Deviations / additions:
- any backbone from ``BACKBONES`` (the paper used GoogLeNet / Inception v3; Tanti et al. 2018 used VGG16 fc7),
  or any timm model as ``timm/<model name>`` (``showtell.model.timm_backbones``, an optional extra);
- a frozen backbone stays in eval mode even when the parent module is put in train mode, so its BatchNorm
  statistics and dropout never change (im2txt does the same with ``is_training=False`` for a frozen CNN);
- the embedding keeps PyTorch's default Linear initialisation (im2txt: uniform(-0.08, 0.08));
- ``feature_dim`` builds an encoder without CNN that embeds precomputed (cached) features; with ``attach``
  the declared CNN is built as well (frozen), so a model trained on a features file can caption images.

Preprocessing (resize, crop, mean, std) comes from the torchvision weights it belongs to, or from the timm
model's pretrained configuration (``preprocess_for``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from showtell.errors import OptionError
from showtell.model.backbones import build_backbone


class ImageEncoder(nn.Module):
    """Frozen-by-default backbone + Linear image embedding: (B, 3, H, W) or (B, D) -> (B, E)."""

    def __init__(self, name: str = "resnet50", weights: str | None = "DEFAULT", embed_size: int = 512,
                 frozen: bool = True, feature_dim: int | None = None, feature_norm: bool = False,
                 attach: bool = False):
        super().__init__()
        self.name = name
        if feature_dim is not None and feature_dim < 1:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if feature_dim is None or attach:
            self.backbone, self.num_features = build_backbone(name, weights)
            if feature_dim is not None and feature_dim != self.num_features:
                raise OptionError(f"--model.attach_encoder: {name} gives {self.num_features}-d features but "
                                  f"--data.features holds {feature_dim}-d ones; declare the encoder that made "
                                  "the file (--model.encoder, --model.weights)")
        else:  # precomputed features are fed: no CNN at all
            self.backbone, self.num_features = None, feature_dim
        self.embed_size = embed_size
        # Optional (not in the paper): BatchNorm over the pooled features before the embedding. Pretrained
        # features are well scaled; a *random* CNN's (the offline demo) carry their signal in small deviations
        # around large per-dimension offsets, which this standardises.
        self.feature_norm = nn.BatchNorm1d(self.num_features) if feature_norm else nn.Identity()
        self.embed = nn.Linear(self.num_features, embed_size, bias=False)  # im2txt: no bias
        self._frozen = False
        if frozen:
            self.freeze()

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Backbone gets no gradients and stays in eval mode (BatchNorm statistics and dropout fixed)."""
        self._frozen = True
        if self.backbone is not None:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def unfreeze(self) -> None:
        """Fine-tuning: backbone trainable and following the parent's train/eval mode."""
        self._frozen = False
        if self.backbone is not None:
            self.backbone.requires_grad_(True)
            self.backbone.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if self._frozen and self.backbone is not None:
            self.backbone.eval()
        return self

    def features(self, images: Tensor) -> Tensor:
        """Pooled backbone features: (B, 3, H, W) -> (B, D)."""
        if self.backbone is None:
            raise RuntimeError("this encoder has no backbone (feature_dim was given): feed precomputed "
                               f"(B, {self.num_features}) features instead of images")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self._frozen):
            return self.backbone(images)  # (B, D)

    def forward(self, x: Tensor) -> Tensor:
        """Pixels (B, 3, H, W) or precomputed features (B, D) -> image embeddings (B, E)."""
        if x.dim() == 4:
            x = self.features(x)
        elif x.dim() != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected images (B, 3, H, W) or features (B, {self.num_features}), "
                             f"got shape {tuple(x.shape)}")
        return self.embed(self.feature_norm(x))  # (B, E)

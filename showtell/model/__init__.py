"""The captioner's networks, plain ``nn.Module``s without Lightning: the image encoder (a frozen torchvision or
timm backbone and the image embedding), the LSTM decoder, and decoding (greedy, beam search, sampling)."""

from showtell.model.backbones import BACKBONES, build_backbone, eval_transform, preprocess_for
from showtell.model.decoder import CONDITIONING, CaptionDecoder
from showtell.model.decoding import Decoded, decode
from showtell.model.encoder import ImageEncoder

__all__ = ["BACKBONES", "CONDITIONING", "CaptionDecoder", "Decoded", "ImageEncoder", "build_backbone", "decode",
           "eval_transform", "preprocess_for"]

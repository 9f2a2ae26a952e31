"""The captioner's networks, plain ``nn.Module``s without Lightning: the image encoder (a frozen torchvision or
timm backbone and the image embedding), the LSTM decoder, and decoding (greedy, beam search, sampling).
The names below load on first use."""

from showtell.lazy import lazy_exports

_EXPORTS = {"BACKBONES": "backbones", "build_backbone": "backbones", "eval_transform": "backbones",
            "preprocess_for": "backbones", "CONDITIONING": "decoder", "CaptionDecoder": "decoder",
            "Decoded": "decoding", "decode": "decoding", "ImageEncoder": "encoder"}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

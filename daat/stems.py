"""The convolutional patch stem a student ViT may use in place of timm's one strided patchify
convolution (``model.stem=conv``). Passed to timm as ``embed_layer`` by ``models.timm_model_args``.
"""

from __future__ import annotations

from timm.layers import LayerNorm2d, PatchEmbed
from torch import nn

from daat.config import ConfigError


class ConvStem(PatchEmbed):
    """ViT + ConvStem (Singh et al. 2023, after Xiao et al. 2021): log2(patch_size) 3x3 stride-2
    convolutions, each followed by a channel LayerNorm and GELU, then a 1x1 convolution to the
    embedding width, in place of the one strided patchify convolution. The token grid is the
    patchify stem's (img_size / patch_size per side), so A(x), G and L_align are unchanged. The
    widths double up to embed_dim / 2 (embed_dim 128, patch 8: 16, 32, 64). LayerNorm, not the
    paper's BatchNorm: the model keeps no batch statistics, so a sample's logits never depend on
    the rest of its batch (training batches [x_adv; x] together; attacks run in eval mode)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True, **kwargs):
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=embed_dim,
            bias=bias,
            **kwargs,
        )
        size = self.patch_size[0]
        if size != self.patch_size[1] or size < 2 or size & (size - 1):
            raise ConfigError(
                f"model.stem=conv needs model.patch_size to be a power of two "
                f">= 2 (one stride-2 conv per halving), got {self.patch_size}"
            )
        halvings = size.bit_length() - 1
        layers: list[nn.Module] = []
        width_in = in_chans
        for i in range(halvings):
            width = max(embed_dim >> (halvings - i), 8)
            layers += [
                nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False),
                LayerNorm2d(width),
                nn.GELU(),
            ]
            width_in = width
        layers.append(nn.Conv2d(width_in, embed_dim, 1, bias=bias))
        self.proj = nn.Sequential(*layers)

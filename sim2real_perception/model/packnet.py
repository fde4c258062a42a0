"""PackNet 3D packing / unpacking layers (Guizilini et al., CVPR 2020).

Packing replaces striding with space-to-depth plus a Conv3d that learns to compress the
folded spatial detail, so fine structure survives the downsampling; unpacking is the
mirror image ending in depth-to-space.
"""
import torch.nn as nn
import torch.nn.functional as F


def conv_in_relu(in_ch, out_ch, kernel_size=3):
    """Conv2d + InstanceNorm + ReLU: the paper's basic block inside domain-specific parts."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
        nn.InstanceNorm2d(out_ch, affine=True),
        nn.ReLU(inplace=True),
    )


class PackLayer(nn.Module):
    """Space-to-depth (r=2) -> Conv3d(1->d) -> fold -> Conv2d + InstanceNorm + ReLU."""

    def __init__(self, in_ch, out_ch, kernel_size=3, d=8):
        super().__init__()
        self.d = d
        self.conv3d = nn.Conv3d(1, d, kernel_size=3, padding=1)
        self.conv = conv_in_relu(in_ch * 4 * d, out_ch, kernel_size)

    def forward(self, x):
        x = F.pixel_unshuffle(x, 2)
        b, c, h, w = x.shape
        x = self.conv3d(x.unsqueeze(1)).reshape(b, c * self.d, h, w)
        return self.conv(x)


class UnpackLayer(nn.Module):
    """Conv2d + InstanceNorm + ReLU -> Conv3d(1->d) -> fold -> depth-to-space (r=2)."""

    def __init__(self, in_ch, out_ch, kernel_size=3, d=8):
        super().__init__()
        if (4 * out_ch) % d:
            raise ValueError(f'unpacking to {out_ch} channels needs 4*{out_ch} divisible by d={d}')
        self.d = d
        self.conv = conv_in_relu(in_ch, 4 * out_ch // d, kernel_size)
        self.conv3d = nn.Conv3d(1, d, kernel_size=3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        x = self.conv3d(x.unsqueeze(1)).reshape(b, c * self.d, h, w)
        return F.pixel_shuffle(x, 2)


class ResBlock(nn.Module):
    """Conv-IN-ReLU-Conv-IN with an identity skip (Table 2 rows 7-8 and 13-14)."""

    def __init__(self, channels, kernel_size=3):
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, padding=pad),
            nn.InstanceNorm2d(channels, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size, padding=pad),
            nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x):
        return x + self.body(x)

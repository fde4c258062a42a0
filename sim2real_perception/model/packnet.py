"""PackNet 3D packing / unpacking layers (Guizilini et al., CVPR 2020).

Packing replaces striding with space-to-depth plus a Conv3d that learns to compress the
folded spatial detail, so fine structure survives the downsampling; unpacking is the
mirror image ending in depth-to-space.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _FoldConv3d(torch.autograd.Function):
    """``F.conv3d`` (3x3x3, padding 1) whose input gradient is a plain forward conv3d.

    A packing Conv3d has one input channel and a volume as large as the image, and on the
    CPU autograd's transposed conv3d for its input gradient is its slowest kernel. The same
    gradient is the forward convolution of the output gradient with the flipped, transposed
    kernel: 57 ms instead of about 160 for the `cpu` preset's first packing layer at batch 4,
    and 1.8-1.9x faster training steps (bench/bench_train.py).
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return F.conv3d(x, weight, bias, padding=1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.conv3d(grad, weight.flip(2, 3, 4).transpose(0, 1), padding=1)
        if ctx.needs_input_grad[1]:
            gw = torch.nn.grad.conv3d_weight(x, weight.shape, grad, padding=1)
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3, 4))
        return gx, gw, gb


class FoldConv3d(nn.Conv3d):
    """The packing layers' Conv3d(1 -> d, 3x3x3): the same module, a faster CPU backward."""

    def __init__(self, d):
        super().__init__(1, d, kernel_size=3, padding=1)

    def forward(self, x):
        exporting = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
        if x.is_cpu and torch.is_grad_enabled() and not exporting and (
                x.requires_grad or self.weight.requires_grad):
            return _FoldConv3d.apply(x, self.weight, self.bias)
        return super().forward(x)


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
        self.conv3d = FoldConv3d(d)
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
        self.conv3d = FoldConv3d(d)

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

"""The floor every learned model must beat: a per-pixel prior that ignores the image.

Per pixel of the model's input grid it holds the mean sim depth and the most frequent sim
label over the labelled training frames (``training.mean_prior`` computes them). It has
the deployed network's interface (uint8 NHWC RGB in, metres and class ids out), so the
predictor, the ONNX export and the node serve it like any other model.
"""
import torch
import torch.nn as nn

from ..model_config import ModelConfig


class MeanPriorNet(nn.Module):
    """Return the same depth map and label map for every input frame."""

    def __init__(self, cfg, depth=None, labels=None):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        self.cfg = cfg
        h, w = cfg.height, cfg.width
        depth = torch.full((h, w), cfg.max_depth) if depth is None else torch.as_tensor(depth)
        labels = torch.zeros((h, w), dtype=torch.uint8) if labels is None else \
            torch.as_tensor(labels)
        if tuple(depth.shape) != (h, w) or tuple(labels.shape) != (h, w):
            raise ValueError(f'mean prior maps must be {h}x{w}')
        self.register_buffer('depth_map', depth.float().contiguous())
        self.register_buffer('label_map', labels.to(torch.uint8).contiguous())

    def forward(self, image_u8):
        """Broadcast the prior maps to the batch of ``image_u8`` (N x H x W x 3 uint8)."""
        n = image_u8.shape[0]
        return self.depth_map.expand(n, -1, -1), self.label_map.expand(n, -1, -1)

"""The twin-VAE of the paper (Table 2).

Real/sim encoders and decoders with a shared latent space, plus auxiliary depth and
segmentation decoders with their own weights.

Layer numbering follows Table 2: the encoder is rows 1-10, a decoder rows 11-20. Weight
sharing is between the *last* ``shared_layers`` encoder layers and the *first*
``shared_layers`` decoder layers of the real and sim branches. The paper disagrees with
itself here (section 3.2 says three layers, Table 2 marks one per side as shared), so the
count is a config value that defaults to section 3.2's three.

The latent follows UNIT: the encoder predicts the mean of q(z|x) with unit variance, so
the reparameterisation trick is ``z = mu + eps`` in training and ``z = mu`` in eval.
"""
import math

import torch
import torch.nn as nn

from ..model_config import ground_class_ids, ModelConfig
from .depth_coding import decode_depth
from .packnet import PackLayer, ResBlock, UnpackLayer


class LatentHead(nn.Sequential):
    """Row 10: Conv2D + BatchNorm giving the mean of q(z|x) (shared between domains)."""

    def __init__(self, in_ch, out_ch, kernel_size):
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                         nn.BatchNorm2d(out_ch))


class LatentUp(nn.Sequential):
    """Row 11: ConvTranspose2D + BatchNorm + ReLU (stride 1, keeps 1/64 scale)."""

    def __init__(self, in_ch, out_ch, kernel_size):
        super().__init__(
            nn.ConvTranspose2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class OutputLayer(nn.Sequential):
    """Row 20: ConvTranspose2D (+ tanh for images and depth, raw logits for segmentation)."""

    def __init__(self, in_ch, out_ch, kernel_size, tanh):
        layers = [nn.ConvTranspose2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)]
        if tanh:
            layers.append(nn.Tanh())
        super().__init__(*layers)


#: Keeps a flat channel (a uniform test image) finite: std floor of about 0.03 on [-1, 1].
STD_EPS = 1e-3


class Stem(nn.Sequential):
    """Row 1: Conv2D + LeakyReLU, after the optional per-image standardisation.

    ``norm`` (``model.input_norm``) ``image`` maps each channel of each image to mean 0 and
    std 1 first: a per-channel gain and offset (white balance, exposure, contrast) then
    leaves no trace in what the network sees. ``image_joint`` centres each channel but
    divides by one std over all channels. It holds no weights, so checkpoints keep their
    keys either way.
    """

    def __init__(self, in_ch, out_ch, kernel_size, norm='none'):
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
                         nn.LeakyReLU(0.2, inplace=True))
        self.norm = norm

    def forward(self, x):
        if self.norm != 'none':
            x = x - x.mean(dim=(2, 3), keepdim=True)
            dims = (2, 3) if self.norm == 'image' else (1, 2, 3)
            x = x / x.square().mean(dim=dims, keepdim=True).add(STD_EPS).sqrt()
        return super().forward(x)


def encoder_layers(cfg):
    """Rows 1-10 as a list of modules."""
    k = cfg.kernel_size
    layers = [Stem(cfg.in_channels, cfg.stem_channels, cfg.stem_kernel, cfg.input_norm)]
    prev = cfg.stem_channels
    for ch in cfg.pack_channels:
        layers.append(PackLayer(prev, ch, k, cfg.packing_d))
        prev = ch
    layers += [ResBlock(prev, k) for _ in range(cfg.res_blocks)]
    layers.append(PackLayer(prev, cfg.bottleneck_channels, k, cfg.packing_d))
    layers.append(LatentHead(cfg.bottleneck_channels, cfg.latent_channels, k))
    return layers


def decoder_layers(cfg, out_channels, tanh, skip_channels=None):
    """Rows 11-20 as a list of modules (the exact mirror of the encoder).

    ``skip_channels`` (scale -> channels) widens the input of the layer that reads that
    scale: the unpacking layers after the residual blocks and the output layer.
    """
    k = cfg.kernel_size
    extra = skip_channels or {}
    widths = [cfg.stem_channels, *cfg.pack_channels]
    layers = [LatentUp(cfg.latent_channels, cfg.bottleneck_channels, k),
              UnpackLayer(cfg.bottleneck_channels, widths[-1], k, cfg.packing_d)]
    layers += [ResBlock(widths[-1], k) for _ in range(cfg.res_blocks)]
    scale = cfg.downsampling // 2
    for in_ch, out_ch in zip(widths[:0:-1], widths[-2::-1]):
        layers.append(UnpackLayer(in_ch + extra.get(scale, 0), out_ch, k, cfg.packing_d))
        scale //= 2
    layers.append(OutputLayer(cfg.stem_channels + extra.get(1, 0), out_channels,
                              cfg.stem_kernel, tanh))
    return layers


def skip_inputs(cfg):
    """Map decoder layer index -> the encoder scale concatenated to that layer's input."""
    sources = cfg.skip_sources()
    first = 2 + cfg.res_blocks   # the first unpacking layer after the residual blocks
    scales = [cfg.downsampling // 2 ** (i + 1) for i in range(len(cfg.pack_channels) + 1)]
    return {first + i: s for i, s in enumerate(scales) if s in sources}


class Stack(nn.Module):
    """An ordered list of layers run one after the other (kept as a list for sharing)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_collect(self, x, keep):
        """Run the stack; also return ``{scale: output}`` of the layers ``keep`` names.

        ``keep`` maps layer index -> scale (``ModelConfig.skip_sources``, inverted).
        """
        feats = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in keep:
                feats[keep[i]] = x
        return x, feats


class SkipStack(Stack):
    """A decoder that concatenates encoder features (U-Net skips) before some layers."""

    def __init__(self, layers, skip_at):
        super().__init__(layers)
        self.skip_at = dict(skip_at)

    def forward(self, x, feats=None):
        for i, layer in enumerate(self.layers):
            if i in self.skip_at:
                x = torch.cat([x, feats[self.skip_at[i]]], dim=1)
            x = layer(x)
        return x


def task_decoder(cfg, out_channels, tanh):
    """Build a depth or segmentation decoder: with the configured skips, or the plain mirror."""
    sources = cfg.skip_sources()
    if not sources:
        return Stack(decoder_layers(cfg, out_channels, tanh))
    channels = {scale: ch for scale, (_, ch) in sources.items()}
    return SkipStack(decoder_layers(cfg, out_channels, tanh, channels), skip_inputs(cfg))


def skip_keep(cfg):
    """Return encoder layer index -> scale of the features the task decoders receive."""
    return {index: scale for scale, (index, _) in cfg.skip_sources().items()}


class PriorMaps(nn.Module):
    """Per-pixel prior the heads predict a residual over (``model.prior: residual``).

    Holds the pre-tanh code of the prior depth and the log class frequencies of the
    labelled training frames at the model size. Before ``set_maps`` the maps are neutral
    (zero depth code, uniform frequencies): the heads then behave as without a prior.
    """

    def __init__(self, cfg):
        super().__init__()
        h, w, c = cfg.height, cfg.width, cfg.num_classes
        self.register_buffer('depth_code', torch.zeros(1, 1, h, w))
        self.register_buffer('log_freq', torch.full((1, c, h, w), -math.log(c)))
        self.ground = ground_class_ids(c) if cfg.prior_gate != 'none' else []
        if cfg.prior_gate == 'ground':   # only then, so other checkpoints keep their keys
            self.register_buffer('ground_code', torch.zeros(1, 1, h, w))

    @torch.no_grad()
    def set_maps(self, depth_t, freq, ground_t=None):
        """Set the maps from depth target maps in (-1, 1) (H x W) and frequencies (C x H x W).

        ``ground_t``: the ground's depth targets, for ``prior_gate: ground`` (needed then).
        """
        def code(t):
            return torch.atanh(torch.as_tensor(t, dtype=torch.float32).clamp(-0.995, 0.995))
        f = torch.as_tensor(freq, dtype=torch.float32)
        self.depth_code.copy_(code(depth_t).reshape(self.depth_code.shape))
        self.log_freq.copy_(torch.log(f / f.sum(0, keepdim=True)).reshape(self.log_freq.shape))
        if hasattr(self, 'ground_code'):
            if ground_t is None:
                raise ValueError('model.prior_gate: ground needs the ground depth map')
            self.ground_code.copy_(code(ground_t).reshape(self.ground_code.shape))

    def depth(self, raw, logits=None):
        """Return the prior's depth plus ``raw``; under ``prior_gate``, ``logits`` gate it.

        The gate reads the logits without gradient: the labels learn from their own loss
        only, and the depth loss cannot make the segmentation head unsee a road.
        """
        code = raw + self.depth_code
        if self.ground:
            p = torch.softmax(logits.detach(), dim=1)[:, self.ground].sum(1, keepdim=True)
            flat = self.ground_code if hasattr(self, 'ground_code') else self.depth_code
            code = p * flat + (1.0 - p) * code
        return torch.tanh(code)

    @property
    def gated(self):
        return bool(self.ground)

    def logits(self, raw):
        return raw + self.log_freq


def init_gaussian(module, std):
    """Gaussian initialisation (section 3.2): N(0, std) conv weights, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


class TwinVAE(nn.Module):
    """Real/sim encoders and decoders plus the depth and segmentation decoders."""

    def __init__(self, cfg):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        self.cfg = cfg
        n = cfg.shared_layers
        enc_real = encoder_layers(cfg)
        enc_sim = encoder_layers(cfg)[:-n] + enc_real[-n:]
        dec_real = decoder_layers(cfg, cfg.in_channels, tanh=True)
        dec_sim = dec_real[:n] + decoder_layers(cfg, cfg.in_channels, tanh=True)[n:]
        self.enc_real, self.enc_sim = Stack(enc_real), Stack(enc_sim)
        self.dec_real, self.dec_sim = Stack(dec_real), Stack(dec_sim)
        self.dec_depth = task_decoder(cfg, 1, tanh=cfg.prior == 'none')
        self.dec_seg = task_decoder(cfg, cfg.num_classes, tanh=False)
        self.prior = PriorMaps(cfg) if cfg.prior == 'residual' else None
        self._keep = skip_keep(cfg)
        init_gaussian(self, cfg.init_std)

    def encoder(self, domain):
        return {'real': self.enc_real, 'sim': self.enc_sim}[domain]

    def decoder(self, domain):
        return {'real': self.dec_real, 'sim': self.dec_sim,
                'depth': self.dec_depth, 'seg': self.dec_seg}[domain]

    def encode(self, x, domain):
        """Return ``(mu, z)``: z is ``mu + N(0, I)`` in training, ``mu`` in eval."""
        mu = self.encoder(domain)(x)
        z = mu + torch.randn_like(mu) if self.training else mu
        return mu, z

    def encode_skips(self, x, domain):
        """Return ``(mu, z, feats)``: ``encode`` plus the skip features of the task heads."""
        mu, feats = self.encoder(domain).forward_collect(x, self._keep)
        z = mu + torch.randn_like(mu) if self.training else mu
        return mu, z, feats

    @property
    def has_skips(self):
        return bool(self._keep)

    def decode(self, z, domain, feats=None):
        """Decode a latent; ``feats`` (from ``encode_skips``) feed the task decoders' skips."""
        if domain not in ('depth', 'seg'):
            return self.decoder(domain)(z)
        if domain == 'depth' and self.prior is not None and self.prior.gated:
            return self.decode_heads(z, feats)[0]
        return with_prior(self.prior, domain, self._raw(z, domain, feats))

    def _raw(self, z, head, feats):
        return self.decoder(head)(z, feats) if self.has_skips else self.decoder(head)(z)

    def decode_heads(self, z, feats=None):
        """Return (depth, logits) from one latent, each head decoded once."""
        logits = with_prior(self.prior, 'seg', self._raw(z, 'seg', feats))
        return with_prior(self.prior, 'depth', self._raw(z, 'depth', feats), logits), logits

    def forward(self, x, domain='real'):
        """Inference path: depth targets in [-1, 1] and class logits for one domain."""
        _, z, feats = self.encode_skips(x, domain)
        return self.decode_heads(z, feats)


def with_prior(prior, head, out, logits=None):
    """Add a head's output to the prior (``model.prior: residual``), or return it as it is.

    ``logits`` (the finished segmentation output) gate the depth residual under
    ``model.prior_gate: ground``.
    """
    if prior is None:
        return out
    return prior.depth(out, logits) if head == 'depth' else prior.logits(out)


class DepthSegNet(nn.Module):
    """Deployed path: uint8 NHWC RGB -> (depth metres BxHxW, class ids BxHxW uint8).

    Only the real encoder and the two auxiliary decoders, so a robot loads a third of the
    weights. Normalisation, depth decoding and argmax live inside the graph so the ONNX
    and PyTorch backends do identical work and the node's Python code stays thin.
    """

    def __init__(self, cfg, twin=None):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = ModelConfig.from_dict(cfg)
        self.cfg = cfg
        self._keep = skip_keep(cfg)
        if twin is None:
            self.encoder = Stack(encoder_layers(cfg))
            self.dec_depth = task_decoder(cfg, 1, tanh=cfg.prior == 'none')
            self.dec_seg = task_decoder(cfg, cfg.num_classes, tanh=False)
            self.prior = PriorMaps(cfg) if cfg.prior == 'residual' else None
        else:
            self.encoder = twin.enc_real
            self.dec_depth, self.dec_seg = twin.dec_depth, twin.dec_seg
            self.prior = twin.prior

    @classmethod
    def from_twin(cls, twin):
        """Share (not copy) the real encoder and auxiliary decoders of a TwinVAE."""
        return cls(twin.cfg, twin)

    def forward(self, image_u8):
        return self.outputs(*self.heads(self.normalise(image_u8)))

    @staticmethod
    def normalise(image_u8):
        """uint8 NHWC RGB -> float NCHW in [-1, 1], what the encoder reads."""
        return image_u8.permute(0, 3, 1, 2).float() * (2.0 / 255.0) - 1.0

    def outputs(self, depth_t, logits):
        """Heads' outputs -> (depth in metres, class ids as uint8): the deployed outputs."""
        cfg = self.cfg
        depth = decode_depth(depth_t[:, 0], cfg.depth_encoding, cfg.min_depth, cfg.max_depth)
        return depth, logits.argmax(dim=1).to(torch.uint8)

    def heads(self, x):
        """Return the depth decoder's tanh output and the class logits for images in [-1, 1]."""
        if self._keep:
            z, feats = self.encoder.forward_collect(x, self._keep)
            depth, logits = self.dec_depth(z, feats), self.dec_seg(z, feats)
        else:
            z = self.encoder(x)
            depth, logits = self.dec_depth(z), self.dec_seg(z)
        logits = with_prior(self.prior, 'seg', logits)
        return with_prior(self.prior, 'depth', depth, logits), logits

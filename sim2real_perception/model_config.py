"""The network's hyper-parameters, importable without torch.

An ONNX Runtime deployment reads an exported model's ``config.json`` through this module,
so it must stay free of torch imports (``sim2real_perception.model`` needs torch).
"""
import dataclasses
from dataclasses import dataclass

from .labels import CLASS_NAMES

#: How the tanh depth output maps to metres (sim2real_perception.model.depth_coding).
ENCODINGS = ('linear', 'inverse', 'log')
#: Which encoder features the depth and segmentation decoders also receive (U-Net skips):
#: none (the paper: the latent only), shared (outputs of the encoder layers the two domains
#: share, so the same weights made them for real and sim) or all (every encoder layer).
SKIPS = ('none', 'shared', 'all')
#: What the depth and segmentation heads predict: the output itself (none, the paper), or a
#: per-pixel residual over the sim mean prior (residual: depth before tanh plus the prior's
#: depth, logits plus the log of the prior's class frequencies), so a run starts at the floor.
PRIORS = ('none', 'residual')
#: Where the depth head's residual applies (``prior: residual`` only): everywhere (none), or
#: weighed by one minus the probability the segmentation head gives the ground classes
#: (road and terrain), the rest of the weight going to flat ground's depth at that pixel:
#: the mean depth of the training frames where that pixel was ground (ground), or the
#: per-pixel mean over every class (ground_mean, the first try: a pixel's mean mixes in the
#: cars and buildings seen there, so it is too near for ground). Either way texture, shadow
#: or markings on the ground cannot move its depth.
PRIOR_GATES = ('none', 'ground', 'ground_mean')
#: The classes ``prior_gate`` reads as flat ground.
GROUND_CLASSES = ('road', 'terrain')
#: What the encoders do to an image before the stem: nothing (none, the paper); subtract
#: each channel's mean over the image and divide by its std (image), so a camera's white
#: balance, exposure and contrast never reach the network; or subtract each channel's mean
#: and divide by one std over all channels (image_joint), which keeps the channels' relative
#: contrast (how saturated the scene is) and removes only part of a white balance.
INPUT_NORMS = ('none', 'image', 'image_joint')
#: Deployed network kinds: the twin-VAE's real encoder + heads, or the per-pixel prior floor.
ARCHITECTURES = ('twin_vae', 'mean_prior')


def ground_class_ids(num_classes):
    """Return the ids of ``GROUND_CLASSES`` among the first ``num_classes`` classes."""
    return [CLASS_NAMES.index(n) for n in GROUND_CLASSES if CLASS_NAMES.index(n) < num_classes]


@dataclass(frozen=True)
class ModelConfig:
    """Network hyper-parameters; see ``config/defaults.yaml`` (section ``model``)."""

    height: int = 256
    width: int = 256
    in_channels: int = 3
    stem_channels: int = 64
    stem_kernel: int = 7
    pack_channels: tuple = (76, 88, 100, 128, 200)
    res_blocks: int = 2
    bottleneck_channels: int = 250
    latent_channels: int = 300
    kernel_size: int = 3
    packing_d: int = 8
    shared_layers: int = 3
    num_classes: int = 12
    init_std: float = 0.02
    depth_encoding: str = 'linear'
    min_depth: float = 0.5
    max_depth: float = 80.0
    skips: str = 'none'
    prior: str = 'none'
    prior_gate: str = 'none'
    architecture: str = 'twin_vae'
    input_norm: str = 'none'
    ground_contact: bool = False

    @classmethod
    def from_dict(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise KeyError(f'unknown model config keys {sorted(unknown)}')
        data = dict(data)
        if 'pack_channels' in data:
            data['pack_channels'] = tuple(int(c) for c in data['pack_channels'])
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self):
        out = dataclasses.asdict(self)
        out['pack_channels'] = list(self.pack_channels)
        return out

    @property
    def num_encoder_layers(self):
        return 1 + len(self.pack_channels) + self.res_blocks + 2

    @property
    def downsampling(self):
        return 2 ** (len(self.pack_channels) + 1)

    def encoder_outputs(self):
        """(channels, downsampling factor) of each encoder layer's output, rows 1-10."""
        p = len(self.pack_channels)
        out = [(self.stem_channels, 1)]
        out += [(ch, 2 ** (i + 1)) for i, ch in enumerate(self.pack_channels)]
        out += [(self.pack_channels[-1], 2 ** p)] * self.res_blocks
        out += [(self.bottleneck_channels, 2 ** (p + 1)), (self.latent_channels, 2 ** (p + 1))]
        return out

    def skip_sources(self):
        """Map scale -> (encoder layer index, channels) of the skips the heads receive.

        One source per scale finer than the latent: the last encoder layer at that scale,
        kept only if ``skips`` allows it (``shared``: one of the last ``shared_layers``).
        """
        if self.skips == 'none':
            return {}
        outputs = self.encoder_outputs()
        first_shared = len(outputs) - self.shared_layers
        sources = {}
        for index, (channels, scale) in enumerate(outputs):
            if scale < self.downsampling and (self.skips == 'all' or index >= first_shared):
                sources[scale] = (index, channels)
        return sources

    def validate(self):
        if not self.pack_channels:
            raise ValueError('model.pack_channels must not be empty')
        # Each packing layer halves the size, and the latent's InstanceNorm needs at least 2
        # pixels a side: 128 for Table 2's six packings, 64 for one packing fewer.
        step = 2 * self.downsampling
        for side, size in (('height', self.height), ('width', self.width)):
            if size <= 0 or size % step:
                raise ValueError(f'model.{side}={size}: must be a positive multiple of {step} '
                                 '(2 ** (len(pack_channels) + 2))')
        if not 1 <= self.shared_layers <= self.num_encoder_layers:
            raise ValueError(f'model.shared_layers={self.shared_layers}: must be in '
                             f'1..{self.num_encoder_layers}')
        if self.depth_encoding not in ENCODINGS:
            raise ValueError(f'model.depth_encoding must be one of {ENCODINGS}')
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError('model: need 0 < min_depth < max_depth')
        if not 1 <= self.num_classes <= 255:
            raise ValueError('model.num_classes must be in 1..255 (mono8 labels, 255 = ignore)')
        if self.skips not in SKIPS:
            raise ValueError(f'model.skips={self.skips!r}: must be one of {SKIPS}')
        if self.prior not in PRIORS:
            raise ValueError(f'model.prior={self.prior!r}: must be one of {PRIORS}')
        if self.prior_gate not in PRIOR_GATES:
            raise ValueError(f'model.prior_gate={self.prior_gate!r}: must be one of '
                             f'{PRIOR_GATES}')
        if self.prior_gate != 'none' and self.prior != 'residual':
            raise ValueError(f'model.prior_gate={self.prior_gate!r} needs model.prior: '
                             'residual (it gates the residual over the prior)')
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(f'model.input_norm={self.input_norm!r}: must be one of '
                             f'{INPUT_NORMS}')
        if not isinstance(self.ground_contact, bool):
            raise ValueError(f'model.ground_contact={self.ground_contact!r}: must be true or '
                             'false')
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f'model.architecture={self.architecture!r}: must be one of '
                             f'{ARCHITECTURES}')
        # The unpacking Conv2d emits 4*out/d channels.
        for ch in (self.stem_channels, *self.pack_channels):
            if (4 * ch) % self.packing_d:
                raise ValueError(f'4*{ch} channels not divisible by packing_d={self.packing_d}')

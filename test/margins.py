"""Compare a model's outputs across code paths without depending on the CPU's float rounding.

Two float32 runs of the same network (batched vs single frame, PyTorch vs ONNX Runtime,
another CPU's kernels) agree only to float32 rounding. On random-weight test models many
pixels sit on near-ties between two class logits, so their argmax may differ between paths,
and which pixels differ depends on the CPU. Rule: labels must agree exactly on every pixel
whose top-2 logit margin, computed in float64, exceeds ``EPS`` times the image's largest
|logit|; the pixels below (``ambiguous``) are counted and their share bounded by
``MAX_AMBIGUOUS``, never compared.

``EPS`` comes from float32 error, checked on the machine that runs the test:
:func:`reference` measures this CPU's float32 PyTorch logits against float64 and fails unless
the error is at most ``EPS / 8`` (here it is 0.5-1e-5 of the largest |logit|: InstanceNorm
and the logit differences amplify the 6e-8 unit roundoff). Two float32 paths each within
``EPS / 8`` of the truth can only disagree where the true margin is below ``EPS / 4``.
"""
from pathlib import Path

import cv2
import numpy as np

EPS = 4e-4
MAX_AMBIGUOUS = 0.02
#: Relative float32 depth error allowed per pixel (measured: <= 4e-5, at 0.5 m, the minimum;
#: the decoder's tanh output is within 5e-7 of float64 over an 80 m range).
DEPTH_RTOL = 1e-3
#: Relative difference allowed for a mean over pixels of depth errors (abs_rel, rmse, ...):
#: each pixel's term moves by its depth's relative error, 4e-5 at most.
METRIC_RTOL = 1e-4


class Reference:
    """Float64 reference outputs of a deployed network (DepthSegNet, dir, or TwinVAE)."""

    def __init__(self, model):
        import torch
        from sim2real_perception.model import DepthSegNet, TwinVAE
        from sim2real_perception.model_io import load_depth_seg_net
        if isinstance(model, (str, Path)):
            model, _ = load_depth_seg_net(model)
        elif isinstance(model, TwinVAE):
            model = DepthSegNet.from_twin(model)
        self.torch = torch
        self.cfg = model.cfg
        self.net32, self.net64 = (DepthSegNet(model.cfg).to(dtype).eval()
                                  for dtype in (torch.float32, torch.float64))
        for net in (self.net32, self.net64):
            net.load_state_dict(model.state_dict())

    def _run(self, net, images_u8, dtype):
        torch = self.torch
        from sim2real_perception.model import decode_depth
        x = torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).to(dtype)
        with torch.inference_mode():
            x = x * (2.0 / 255.0) - 1.0
            if hasattr(net, 'heads'):  # the deployed graph's own pre-argmax outputs
                depth_t, logits = net.heads(x)
            else:
                z = net.encoder(x)
                depth_t, logits = net.dec_depth(z), net.dec_seg(z)
            depth = decode_depth(depth_t[:, 0], self.cfg.depth_encoding,
                                 self.cfg.min_depth, self.cfg.max_depth).double().numpy()
            logits = logits.double().numpy()
        return logits, depth

    def __call__(self, images_u8):
        """Return ``(labels, ambiguous, depth)`` at model size for N model-size uint8 images.

        Fails if this CPU's float32 logits are further than ``EPS / 8`` from float64.
        """
        images_u8 = np.asarray(images_u8)
        if images_u8.ndim == 3:
            images_u8 = images_u8[None]
        logits, depth = self._run(self.net64, images_u8, self.torch.float64)
        logits32, _ = self._run(self.net32, images_u8, self.torch.float32)
        scale = np.abs(logits).max(axis=(1, 2, 3))[:, None, None]
        err = (np.abs(logits32 - logits).max(axis=1) / scale).max()
        assert err <= EPS / 8, (f'float32 logits differ from float64 by {err:.2e} of the '
                                f'largest |logit|; margins.EPS={EPS} assumes <= {EPS / 8}')
        top2 = np.sort(logits, axis=1)[:, -2:]
        ambiguous = (top2[:, 1] - top2[:, 0]) <= EPS * scale
        return logits.argmax(axis=1).astype(np.uint8), ambiguous, depth


def to_size(mask, height, width):
    """Resize a model-size mask like the predictor resizes labels (nearest neighbour)."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.uint8), (width, height),
                      interpolation=cv2.INTER_NEAREST).astype(bool)


def for_predictor(predictor, reference, image):
    """Return ``(labels, ambiguous)`` of ``reference`` at ``image``'s size, as the predictor.

    The model-size input is the predictor's own preprocessing of ``image``.
    """
    labels, ambiguous, _ = reference(predictor.preprocess(image))
    h, w = image.shape[:2]
    full = cv2.resize(labels[0], (w, h), interpolation=cv2.INTER_NEAREST) \
        if labels[0].shape != (h, w) else labels[0]
    return full, to_size(ambiguous[0], h, w)


def assert_labels_agree(got, want, ambiguous, max_ambiguous=MAX_AMBIGUOUS, what='labels'):
    """Assert ``got == want`` on every clear pixel; bound the share of ambiguous pixels."""
    got, want, ambiguous = np.asarray(got), np.asarray(want), np.asarray(ambiguous, bool)
    assert got.shape == want.shape == ambiguous.shape, (got.shape, want.shape, ambiguous.shape)
    share = float(ambiguous.mean())
    assert share <= max_ambiguous, f'{what}: {share:.2%} of pixels within the float margin'
    clear = ~ambiguous
    wrong = int(np.count_nonzero(got[clear] != want[clear]))
    assert wrong == 0, (f'{what}: {wrong} of {int(clear.sum())} pixels with a clear top-2 '
                        f'margin differ')
    return share

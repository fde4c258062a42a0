"""Export an exported model directory to ONNX and check it against PyTorch.

    python -m sim2real_perception.onnx_export --model DIR [--out DIR/model.onnx]

The graph takes uint8 NHWC RGB at the model size with a dynamic batch axis and returns
(depth metres float32 NxHxW, class ids uint8 NxHxW), exactly like DepthSegNet. Weights are
stored inside the single file unless the model is over 2 GB (protobuf's limit). The parity
check at the end runs both backends on the same images and prints the largest depth
difference in metres and the share of identical labels. The graph's metadata names the
SHA-256 of the weights it came from (``model_io.ONNX_WEIGHTS_KEY``), so a loader can tell a
``model.onnx`` left over from an earlier export from the current one.
"""
import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .model_io import load_depth_seg_net, ModelLoadError, ONNX_NAME, ONNX_WEIGHTS_KEY

LOG = logging.getLogger(__name__)
TWO_GB = 2 * 1024 ** 3
INPUT_NAME, OUTPUT_NAMES = 'image', ('depth', 'labels')


def export_onnx(model_dir, out_path=None, opset=18, max_batch=64):
    """Write ``model.onnx`` (atomically) for the model in ``model_dir``; return its path."""
    import torch
    net, config = load_depth_seg_net(model_dir, 'cpu')
    cfg = config['model_config']
    out_path = Path(out_path) if out_path else Path(model_dir) / ONNX_NAME
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in net.state_dict().values())
    external = size > TWO_GB
    example = torch.zeros(2, cfg.height, cfg.width, 3, dtype=torch.uint8)
    batch = torch.export.Dim('batch', min=1, max=max_batch)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f'.{out_path.name}.', suffix='.onnx')
    os.close(fd)
    try:
        torch.onnx.export(net, (example,), tmp, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: batch},),
                          opset_version=opset, dynamo=True, external_data=external)
        if config.get('weights_sha256'):
            _stamp_weights(tmp, config['weights_sha256'])
        os.chmod(tmp, 0o644)
        os.replace(tmp, out_path)
        if external:
            LOG.warning('model is %.1f GB: weights written as external data next to %s',
                        size / 1024 ** 3, out_path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out_path


def _stamp_weights(path, weights_sha256):
    """Record in the graph's metadata which weights it was exported from."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    entries = [p for p in model.metadata_props if p.key != ONNX_WEIGHTS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(entries)
    model.metadata_props.add(key=ONNX_WEIGHTS_KEY, value=weights_sha256)
    onnx.save(model, path)


def parity_images(height, width, count=4, seed=0):
    """Deterministic test images: noise plus smooth gradients (argmax ties are rarer)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    images = []
    for i in range(count):
        grad = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                         (xx + yy + 40 * i) % 256], axis=-1)
        noise = rng.integers(0, 64, size=(height, width, 3))
        images.append(np.clip(grad + noise - 32, 0, 255).astype(np.uint8))
    return np.stack(images)


def parity_check(model_dir, onnx_path, count=4):
    """Run torch and ONNX Runtime on the same images; return (max |depth diff| m, label match)."""
    import onnxruntime as ort
    import torch
    net, config = load_depth_seg_net(model_dir, 'cpu')
    cfg = config['model_config']
    images = parity_images(cfg.height, cfg.width, count)
    with torch.inference_mode():
        t_depth, t_labels = (t.numpy() for t in net(torch.from_numpy(images)))
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    o_depth, o_labels = session.run(None, {session.get_inputs()[0].name: images})
    finite = np.isfinite(t_depth) & np.isfinite(o_depth)
    max_err = float(np.abs(t_depth - o_depth)[finite].max()) if finite.any() else float('nan')
    same = float((t_labels == o_labels).mean())
    return max_err, same


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(
        description=' '.join(__doc__.splitlines()[:1] +
                             __doc__.split('\n\n', 2)[2].split()),
        epilog='example: python -m sim2real_perception.onnx_export --model runs/cpu/export. '
               'Docs: docs/node.md#onnx-export')
    parser.add_argument('--model', required=True,
                        help='exported model directory (config.json + model.safetensors)')
    parser.add_argument('--out', help=f'output file (default: MODEL/{ONNX_NAME}, which '
                                      f'depth_seg_node and backend auto pick up)')
    parser.add_argument('--opset', type=int, default=18, help='ONNX opset (default: 18)')
    parser.add_argument('--max-batch', type=int, default=64,
                        help='largest batch the dynamic batch axis allows (default: 64)')
    parser.add_argument('--check-images', type=int, default=4,
                        help='images in the parity check (default: 4; 0 skips it)')
    return parser


def main(argv=None):
    """Console entry: export, then print the parity check."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    LOG.setLevel(logging.INFO)
    try:
        out = export_onnx(args.model, args.out, args.opset, args.max_batch)
    except ModelLoadError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB)')
    if args.check_images > 0:
        max_err, same = parity_check(args.model, out, args.check_images)
        print(f'parity torch vs onnxruntime on {args.check_images} images: max depth error '
              f'{max_err:.6f} m, identical labels {same * 100:.3f}%')
    return 0


if __name__ == '__main__':
    sys.exit(main())

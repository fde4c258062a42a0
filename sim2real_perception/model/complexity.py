"""Parameter and multiply-accumulate counts per preset.

``python -m sim2real_perception.model.complexity [--preset paper cpu ...] [--json FILE]``

MACs come from ``torch.utils.flop_counter`` (FLOPs / 2), counted on a real forward (and
backward for the training step), so they track the code rather than a hand formula.
"""
import argparse
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import load_config
from .twin_vae import DepthSegNet, TwinVAE, ModelConfig


def count_params(module):
    """Count unique parameters (shared layers once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _macs(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def stage1_step(twin, x_real, x_sim):
    """Run the forward+backward work of one stage-1 step: both VAEs and both cycles."""
    _, z_r = twin.encode(x_real, 'real')
    _, z_s = twin.encode(x_sim, 'sim')
    rec_r, rec_s = twin.decode(z_r, 'real'), twin.decode(z_s, 'sim')
    cyc_r = twin.decode(twin.encode(twin.decode(z_r, 'sim'), 'sim')[1], 'real')
    cyc_s = twin.decode(twin.encode(twin.decode(z_s, 'real'), 'real')[1], 'sim')
    loss = sum(t.abs().mean() for t in (rec_r, rec_s, cyc_r, cyc_s))
    loss.backward()


def complexity(model_cfg):
    """Return a dict of parameter counts and per-frame MACs for one model config."""
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else ModelConfig.from_dict(model_cfg)
    twin = TwinVAE(cfg)
    net = DepthSegNet.from_twin(twin).eval()
    image = torch.zeros(1, cfg.height, cfg.width, 3, dtype=torch.uint8)
    with torch.no_grad():
        infer = _macs(lambda: net(image))
    x = torch.randn(2, 3, cfg.height, cfg.width)
    twin.train()
    train = _macs(lambda: stage1_step(twin, x, x)) // 2
    return {
        'input': [cfg.height, cfg.width],
        'params_total': count_params(twin),
        'params_inference': count_params(net),
        'gmac_inference_per_frame': round(infer / 1e9, 3),
        'gmac_stage1_step_per_pair': round(train / 1e9, 3),
    }


def build_parser():
    """Return the command-line parser."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog='Docs: docs/benchmarks.md#model-size')
    parser.add_argument('--preset', nargs='+', default=['paper', 'cpu'],
                        help='preset names or YAML paths (default: paper cpu)')
    parser.add_argument('--json', help='also write the figures to this JSON file')
    return parser


def main(argv=None):
    """Print (and optionally save) the figures of each preset."""
    args = build_parser().parse_args(argv)
    rows = {}
    print(f'{"preset":<10} {"input":>9} {"params":>10} {"infer params":>12} '
          f'{"infer GMAC":>10} {"stage1 GMAC/pair":>16}')
    for preset in args.preset:
        rows[preset] = r = complexity(load_config(preset)['model'])
        print(f'{preset:<10} {r["input"][0]:>4}x{r["input"][1]:<4} '
              f'{r["params_total"] / 1e6:>9.2f}M {r["params_inference"] / 1e6:>11.2f}M '
              f'{r["gmac_inference_per_frame"]:>10.2f} {r["gmac_stage1_step_per_pair"]:>16.2f}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as fh:
            json.dump(rows, fh, indent=2)
    return rows


if __name__ == '__main__':
    main()

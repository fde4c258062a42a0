"""Latent analysis: does the shared latent carry anything about the image?

The paper's recipe decodes depth and labels from the shared latent alone (no skips), and
its encoders follow UNIT: in training the decoders read ``z = mu + N(0, I)``, at run time
``mu``. So the heads can only follow the image as far as ``mu`` differs between frames by
more than that unit noise. This script measures it on the real-style val split, for the
exports ``python bench/bench_transfer.py`` leaves:

- ``mean_abs_mu``: mean |mu| over elements and frames;
- ``frame_std``: the std of each latent element across the frames, averaged over elements
  (0: every frame gets the same latent, so the heads draw one map for all of them);
- ``snr``: that across-frame variance over the training noise's (1): under 1, the noise
  the heads learned to ignore is larger than what tells one frame from another.

``python bench/analyse_latent.py`` writes ``bench/results/latent.json`` and ``.md``. It
trains nothing and takes seconds. See docs/benchmarks.md.
"""
import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / 'bench')):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from analyse_depth_errors import (add_export_arguments, dataset_and_exports,  # noqa: E402
                                  frame_size, load_frames, save_results, SPLIT)

DEFAULT_ROWS = ('twin_vae_paper', 'twin_vae_paper_64x128', 'twin_vae_paper_elbo',
                'twin_vae_paper_64x128_elbo', 'twin_vae')
METRICS = ('mean_abs_mu', 'frame_std', 'snr')


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/analyse_latent.py',
        description='Measure how much the shared latent mean differs between real-style '
                    'frames, against the unit noise the heads are trained with (the '
                    "paper's recipe decodes from it alone). Reads the exports of python "
                    'bench/bench_transfer.py; writes latent.json/.md (docs/benchmarks.md).')
    add_export_arguments(p, DEFAULT_ROWS)
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where latent.json/.md go (default: bench/results)')
    return p


def latent_stats(mu):
    """Figures of one model's latent means ``mu`` (frames x elements), as the module says."""
    mu = np.asarray(mu, np.float64).reshape(len(mu), -1)
    var = mu.var(axis=0, ddof=1) if len(mu) > 1 else np.zeros(mu.shape[1])
    return {'mean_abs_mu': float(np.abs(mu).mean()), 'frame_std': float(np.sqrt(var).mean()),
            'snr': float(var.mean())}


def latent_means(predictor, frames):
    """The real encoder's mean latent of each frame: (frames x elements array, CxHxW)."""
    import torch
    net = predictor.runner.net
    out = []
    with torch.inference_mode():
        for image, _, _ in frames:
            x = torch.from_numpy(predictor.preprocess(image)[None])
            out.append(net.encoder(net.normalise(x)).float().numpy())
    return np.concatenate(out).reshape(len(out), -1), 'x'.join(map(str, out[0].shape[1:]))


def markdown(result):
    """The table of latent.json."""
    lines = ['| row | seeds | latent | mean abs mu | across-frame std | SNR (var / 1) |',
             '|---|---|---|---:|---:|---:|']
    for row, r in result['rows'].items():
        seeds = ' '.join(str(s['seed']) for s in r['seeds'])
        lines.append(f'| {row} | {seeds} | {r["latent"]} | {r["mean_abs_mu"]:.3f} | '
                     f'{r["frame_std"]:.4f} | {r["snr"]:.4f} |')
    return '\n'.join(lines) + '\n'


def main(argv=None):
    """Analyse the exports; exit 0 when at least one was measured, 2 when none was found."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    exports = dataset_and_exports(args)
    if exports is None:
        return 2
    from sim2real_perception.config import load_config
    from sim2real_perception.predictor import Predictor
    cfg = load_config('cpu', [f'data.eval.root={args.data}'])
    frames = load_frames(cfg['data']['eval'], frame_size(args.data))
    rows = {}
    for row, by_seed in exports.items():
        per_seed = []
        for seed, path in by_seed.items():
            predictor = Predictor.from_path(str(path), backend='torch', device='cpu')
            mu, shape = latent_means(predictor, frames)
            per_seed.append({'seed': seed, 'export': str(path), **latent_stats(mu)})
        rows[row] = {'seeds': per_seed, 'latent': shape,
                     **{m: float(np.mean([s[m] for s in per_seed])) for m in METRICS}}
    result = {
        'command': shlex.join(['python', 'bench/analyse_latent.py',
                               *(sys.argv[1:] if argv is None else argv)]),
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'data': {'root': str(args.data), 'split': SPLIT, 'frames': len(frames)},
        'rows': rows,
    }
    save_results(args.results, 'latent', result,
                 f'Shared latent of the real encoder on {len(frames)} real-style {SPLIT} '
                 'frames (training adds N(0, I) to it):', markdown(result))
    print(f'wrote {Path(args.results) / "latent.json"} '
          f'({time.perf_counter() - t0:.0f} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())

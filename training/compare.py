"""Train and score the method against its baselines over several seeds: the paper's Table 1.

``python -m training.compare --config cpu --seeds 0 1 2 --methods twin_vae sim_only oracle
--out DIR``

For every method and seed it trains ``python -m training.train`` into
``DIR/runs/<method>_s<seed>/`` (a finished run, one whose ``export/`` exists, is reused; a
killed one is resumed), then scores every exported model with ``training.evaluate`` on the
real-style evaluation split (``data.eval``, split ``val``) and on the sim validation split
(``data.sim``, split ``val``). It prints and writes (``DIR/compare.json``, ``DIR/compare.md``)
one Table-1-shaped table per split with mean ± sample std over seeds, the fraction of the
sim_only -> oracle gap each other method closes on AbsRel and mIoU (real-style split only:
on sim data that gap is not the domain gap), and a Figure-3-like
``DIR/eval_<split>.png`` for the first seed.

``--variant NAME=METHOD[,key=value...]`` adds a row trained with extra config overrides
(ablations), e.g. ``--variant frozen=twin_vae,train.stage2_freeze_encoders=true``.
"""
import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sim2real_perception.config import load_config
from sim2real_perception.model_io import CONFIG_NAME, ModelLoadError
from sim2real_perception.predictor import Predictor

from .data import DataError
from .evaluate import eval_settings, evaluate_models, json_safe, save_figure, write_json
from .results_table import COLUMNS, format_cell, metric_value, render

REPO = Path(__file__).resolve().parent.parent
TRAIN_METHODS = ('mean_prior', 'sim_only', 'oracle', 'twin_vae')
#: (name in the output, data section, split) scored for every run.
SPLITS = (('real', 'eval', 'val'), ('sim', 'sim', 'val'))
#: (section, key, higher is better) of the metrics whose gap fraction is reported.
GAP_METRICS = (('depth', 'abs_rel', False), ('segmentation', 'miou', True))


class CompareError(RuntimeError):
    """A problem the user must fix (a failed or mismatched training run)."""


def _split_top_level(text, sep=','):
    """Split ``text`` at ``sep`` outside YAML brackets, so ``k=[0, 1]`` stays one override."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in '[{':
            depth += 1
        elif ch in ']}':
            depth = max(0, depth - 1)
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_variant(text):
    """Split ``NAME=METHOD[,key=value...]`` into (name, method, [overrides]).

    A value may be a YAML list or mapping with commas of its own (``k=[0, 1]``, ``k={a: b}``).
    """
    name, sep, rest = text.partition('=')
    parts = [p.strip() for p in _split_top_level(rest) if p.strip()]
    if not sep or not name or not parts or parts[0] not in TRAIN_METHODS:
        raise ValueError(f'--variant {text!r}: expected NAME=METHOD[,key=value...] with '
                         f'METHOD in {TRAIN_METHODS}')
    if any('=' not in p for p in parts[1:]):
        raise ValueError(f'--variant {text!r}: overrides must look like key=value')
    return name, parts[0], parts[1:]


def train_command(config, method, seed, run_dir, overrides, resume):
    """Return the ``python -m training.train`` argv for one run."""
    cmd = [sys.executable, '-m', 'training.train', '--config', str(config), '--method', method,
           '--seed', str(seed), '--run-dir', str(run_dir), '--no-progress']
    if overrides:
        cmd += ['--set', *overrides]
    if resume:
        cmd.append('--resume')
    return cmd


def run_request(config, method, seed, overrides):
    """Describe one training run: method, seed and the fully resolved config (less eval).

    The resolved config, not the preset name, is compared, so a run is not reused after
    someone edits the preset YAML.
    """
    cfg = load_config(config, overrides)
    cfg.pop('eval', None)
    cfg['train']['seed'] = int(seed)
    cfg['train']['progress'] = False
    return {'method': method, 'seed': int(seed), 'config': json_safe(cfg)}


_STAGE_KEYS = ('train.stage1_epochs', 'train.stage2_epochs', 'train.stage1_steps',
               'train.stage2_steps', 'train.stage2_freeze_encoders', 'train.stage2_real_input',
               'train.stage2_lean', 'loss.mmd_gamma_scale', 'loss.mmd_on') + tuple(
    f'loss.{k}' for k in ('kl_real', 'kl_sim', 'recon_real', 'recon_sim', 'mmd_real',
                          'mmd_sim', 'cycle_real', 'cycle_sim', 's2_kl_real', 's2_kl_sim',
                          's2_mmd_s2r', 's2_mmd_r2s', 'depth_sim', 'depth_real', 'ce_sim',
                          'ce_real', 's2_adv', 's2_pseudo_ce', 's2_pseudo_depth',
                          'pseudo_threshold', 'pseudo_strength', 'pseudo_mix',
                          'pseudo_teacher_ema'))
_SUPERVISED_KEYS = ('train.supervised_epochs', 'train.supervised_steps', 'loss.depth',
                    'loss.ce', 'train.bn_recalibrate_baselines', 'loss.depth_class_balance')
#: sim_only's self-training stage (train.self_train_steps > 0) reads these and the real frames.
_SELF_TRAIN_KEYS = ('train.self_train_steps', 'train.self_train_lr', 'train.self_train_keep',
                    'train.self_train_batch', 'train.self_train_sim',
                    'train.self_train_rounds', 'train.self_train_paste', 'loss.self_train_ce',
                    'loss.self_train_depth')
_SELF_TRAIN_READS = ('data.real', 'loss.pseudo_threshold', 'loss.pseudo_strength')
#: Config keys a method never reads: editing them (say, a twin-VAE setting of the preset)
#: does not make that method's finished runs stale.
UNUSED_KEYS = {
    'twin_vae': _SUPERVISED_KEYS + _SELF_TRAIN_KEYS,
    'sim_only': _STAGE_KEYS + ('data.real', 'data.eval'),
    'oracle': _STAGE_KEYS + _SELF_TRAIN_KEYS + ('data.real', 'data.sim'),
    'mean_prior': _STAGE_KEYS + _SUPERVISED_KEYS + ('data.real', 'data.eval', 'loss', 'train'),
}


def unused_keys(request):
    """Return the config keys ``request``'s method never reads with its settings."""
    method = request.get('method')
    keys = UNUSED_KEYS.get(method, ())
    if method != 'sim_only':
        return keys
    train = request.get('config', {}).get('train', {})
    if int(train.get('self_train_steps', 0) or 0) > 0:
        return tuple(k for k in keys if k not in _SELF_TRAIN_READS)
    keys = keys + _SELF_TRAIN_KEYS
    if float(train.get('style_mix', 0.0) or 0.0) > 0:   # real frames lend their statistics
        keys = tuple(k for k in keys if k != 'data.real')
    return keys


def relevant_request(request):
    """Return ``request`` without the config keys its method never reads."""
    out = json.loads(json.dumps(request))
    for dotted in unused_keys(out):
        *parents, last = dotted.split('.')
        node = out.get('config', {})
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _defaults():
    """Read defaults.yaml at every check: a key added while a long compare runs is known."""
    return load_config(None)


def _default(path):
    """Return the defaults.yaml value at a dotted ``config.`` path (KeyError if none)."""
    node = _defaults()
    for key in path.split('.')[1:]:
        node = node[key]
    return node


def _differences(old, new, prefix=''):
    """List the dotted keys whose values differ between two nested dicts.

    A key only ``new`` has counts as equal when its value is the default: a key added to
    ``config/defaults.yaml`` after a run was trained changes nothing for that run.
    """
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip('.') or '(all)']
    out = []
    for key in sorted(set(old) | set(new), key=str):
        path = f'{prefix}{key}'
        if key not in old and prefix.startswith('config.'):
            try:
                if json_safe(_default(path)) == new[key]:
                    continue
            except (KeyError, TypeError):
                pass
        out += _differences(old.get(key), new.get(key), f'{path}.')
    return out


def ensure_run(spec, config, run_dir, retrain=False, in_process=False):
    """Train one run unless its export exists; return ``{export_dir, reused, seconds}``.

    ``spec`` = (method, seed, overrides). The run's request (:func:`run_request`) is kept
    in ``RUN/compare_run.json`` so a finished run is only reused for the same request.
    """
    method, seed, overrides = spec
    run_dir = Path(run_dir)
    request = run_request(config, method, seed, overrides)
    record_path = run_dir / 'compare_run.json'
    if run_dir.exists() and retrain:
        shutil.rmtree(run_dir)
    if record_path.is_file():
        old = json.loads(record_path.read_text())
        diff = _differences(relevant_request(old.get('request') or {}),
                            relevant_request(request))
        if diff:
            raise CompareError(f'{run_dir} was trained with different settings ('
                               f'{", ".join(diff[:8])}); use another --out or --retrain')
        if (run_dir / 'export' / CONFIG_NAME).is_file() and old.get('done'):
            return {'export_dir': str(run_dir / 'export'), 'reused': True,
                    'seconds': old.get('seconds')}
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = (run_dir / 'checkpoints').is_dir() and any((run_dir / 'checkpoints').iterdir())
    record_path.write_text(json.dumps({'request': request, 'done': False}, indent=1))
    t0 = time.perf_counter()
    if in_process:
        from .train import run
        cfg = load_config(config, overrides)
        cfg['train']['seed'] = int(seed)
        cfg['train']['progress'] = False
        run(cfg, run_dir, 'all', method, resume)  # the config run_request describes
    else:
        cmd = train_command(config, method, seed, run_dir.resolve(), overrides, resume)
        print(f'[compare] {" ".join(cmd[1:])}  (log: {run_dir / "train.log"})', flush=True)
        with open(run_dir / 'train.log', 'a', encoding='utf-8') as log:
            rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = (run_dir / 'train.log').read_text(errors='replace').splitlines()[-15:]
            raise CompareError(f'training {method} seed {seed} failed (exit {rc}); last '
                               f'lines of {run_dir / "train.log"}:\n' + '\n'.join(tail))
    seconds = time.perf_counter() - t0
    if not (run_dir / 'export' / CONFIG_NAME).is_file():
        raise CompareError(f'training {method} seed {seed} wrote no {run_dir / "export"}')
    record_path.write_text(json.dumps({'request': request, 'done': True, 'seconds': seconds},
                                      indent=1))
    return {'export_dir': str(run_dir / 'export'), 'reused': False, 'seconds': seconds}


def mean_std(values):
    """Return (mean, sample std) of the finite values; std is None for fewer than two."""
    vals = [v for v in values if isinstance(v, float) and math.isfinite(v)]
    if not vals:
        return math.nan, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def summarize(results, runs):
    """Aggregate ``{run: eval result}`` into ``{row: {section.key: {mean, std, values}}}``."""
    rows = {}
    for run_name, info in runs.items():
        rows.setdefault(info['row'], []).append(results[run_name])
    summary = {}
    for row, res in rows.items():
        summary[row] = {}
        for section, key, _, _ in COLUMNS:
            values = [metric_value(r, section, key) for r in res]
            mean, std = mean_std(values)
            summary[row][f'{section}.{key}'] = {'mean': mean, 'std': std, 'values': values}
    return summary


def gap_closed(summary, low='sim_only', high='oracle'):
    """Fraction of the ``low`` -> ``high`` gap each other row closes, per GAP_METRICS.

    ``(method - low) / (high - low)`` on the seed means (1 = as good as the oracle, 0 = no
    better than sim-only, < 0 = worse). None when a value is missing or when ``high`` is
    not better than ``low`` on that metric (then there is no gap to close).
    """
    if low not in summary or high not in summary:
        return {}
    out = {}
    for row in summary:
        if row in (low, high):
            continue
        out[row] = {}
        for section, key, higher_better in GAP_METRICS:
            name = f'{section}.{key}'
            lo, hi, me = (summary[r][name]['mean'] for r in (low, high, row))
            gap = hi - lo
            ok = all(math.isfinite(v) for v in (lo, hi, me)) and \
                (gap > 1e-9 if higher_better else gap < -1e-9)
            out[row][key] = (me - lo) / gap if ok else None
    return out


def gap_lines(gaps, summary, low='sim_only', high='oracle'):
    """Describe ``gap_closed`` results in one line per row."""
    lines = []
    for row, values in gaps.items():
        parts = []
        for section, key, _ in GAP_METRICS:
            value = values.get(key)
            if value is not None:
                parts.append(f'{key} {value:.0%}')
                continue
            lo, hi = (summary[r][f'{section}.{key}']['mean'] for r in (low, high))
            why = f'{high} {hi:.3f} is not better than {low} {lo:.3f}' \
                if math.isfinite(lo) and math.isfinite(hi) else 'missing values'
            parts.append(f'{key} n/a ({why})')
        lines.append(f'{row}: fraction of the {low} -> {high} gap closed: ' + ', '.join(parts))
    return lines


def table_rows(summary, counts):
    """Return ``[(row label, cells)]`` with mean ± std per cell for ``results_table.render``."""
    rows = []
    for row, metrics in summary.items():
        cells = [format_cell(metrics[f'{s}.{k}']['mean'], metrics[f'{s}.{k}']['std'])
                 for s, k, _, _ in COLUMNS]
        rows.append((f'{row} (n={counts[row]})', cells))
    return rows


def build_parser():
    """Return the argument parser (every option documented for ``--help``)."""
    p = argparse.ArgumentParser(
        prog='python -m training.compare',
        description='Train the twin-VAE and its baselines for several seeds (or reuse '
                    'finished runs), score them on the real-style eval split and the sim '
                    'val split, and write Table-1-style tables with mean ± std over seeds '
                    'and the fraction of the sim_only -> oracle gap closed (docs/evaluation.md).',
        epilog='Outputs: OUT/runs/<method>_s<seed>/ (training runs, train.log), '
               'OUT/compare.json, OUT/compare.md, OUT/eval_real.png, OUT/eval_sim.png. '
               'Re-running with the same options reuses finished runs and resumes killed '
               'ones. Exit status 2 on bad options or data, 3 when a training run fails.')
    p.add_argument('--config', default='cpu',
                   help='preset name (cpu, paper, test) or YAML path for training and '
                        'evaluation (default: cpu)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                   help='training seeds (default: 0 1 2)')
    p.add_argument('--methods', nargs='*', default=list(TRAIN_METHODS), choices=TRAIN_METHODS,
                   help='methods to train (default: mean_prior sim_only oracle twin_vae; '
                        'mean_prior is the per-pixel floor, fitted, not trained)')
    p.add_argument('--variant', action='append', default=[], metavar='NAME=METHOD[,K=V...]',
                   help='extra row trained as METHOD with config overrides, repeatable, e.g. '
                        'frozen=twin_vae,train.stage2_freeze_encoders=true; commas inside '
                        'brackets stay in the value: mix=sim_only,train.style_mix_layers=[0, 1]')
    p.add_argument('--out', required=True, metavar='DIR', help='output folder')
    p.add_argument('--data-root', default=None, metavar='DIR',
                   help='shorthand for --set data.sim.root=DIR data.real.root=DIR '
                        'data.eval.root=DIR (a procedural data folder)')
    p.add_argument('--set', nargs='+', action='append', default=[], metavar='KEY=VALUE',
                   help='config overrides for training and evaluation, repeatable, e.g. '
                        'train.stage1_steps=200 eval.median_scaling=true (eval.* keys only '
                        'change the scoring, so finished runs are still reused)')
    p.add_argument('--max-frames', type=int, default=None, metavar='N',
                   help='score at most N frames per split (default: eval.max_frames, 0 = all)')
    p.add_argument('--backend', default=None, choices=('auto', 'torch', 'onnxruntime'),
                   help='predictor backend for scoring (default: eval.backend)')
    p.add_argument('--retrain', action='store_true',
                   help='delete and retrain runs even when finished ones exist')
    p.add_argument('--in-process', action='store_true',
                   help='train through the training.train.run API in this process instead '
                        'of one subprocess per run')
    p.add_argument('--quiet', action='store_true', help='no progress bars')
    return p


def run_compare(args):
    """Train (or reuse) every run, score them, write the reports; return compare.json's dict."""
    t_start = time.perf_counter()
    overrides = [o for group in args.set for o in group]
    if args.data_root:
        root = str(Path(args.data_root).resolve())
        overrides = [f'data.{s}.root={root}' for s in ('sim', 'real', 'eval')] + overrides
    cfg = load_config(args.config, overrides)
    settings = eval_settings(cfg, max_frames=args.max_frames, backend=args.backend)
    # eval.* settings only change the scoring: they are not training requests.
    train_overrides = [o for o in overrides if not o.startswith('eval.')]
    rows = [(m, m, []) for m in dict.fromkeys(args.methods)] + \
        [parse_variant(v) for v in args.variant]
    if len({r[0] for r in rows}) != len(rows):
        raise ValueError('row names (methods and variant names) must be unique')
    seeds = list(dict.fromkeys(args.seeds))
    out = Path(args.out)
    runs = {}
    for row, method, extra in rows:
        for seed in seeds:
            name = f'{row}_s{seed}'
            info = ensure_run((method, seed, train_overrides + extra), args.config,
                              out / 'runs' / name, args.retrain, args.in_process)
            runs[name] = {'row': row, 'method': method, 'seed': seed, 'overrides': extra,
                          **info}
    counts = {row: len(seeds) for row, _, _ in rows}
    report = {
        'created_utc': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'config': cfg['preset'], 'overrides': overrides, 'seeds': seeds,
        'rows': [r[0] for r in rows], 'eval': settings, 'runs': runs, 'splits': {},
    }
    md = [f'# Method comparison ({cfg["preset"]} preset, seeds {seeds})', '',
          f'Mean ± sample std over {len(seeds)} seed(s); scored by `training.evaluate` '
          f'(depth cap {settings["max_depth"]:g} m, median scaling '
          f'{"on" if settings["median_scaling"] else "off"}, Garg crop '
          f'{"on" if settings["garg_crop"] else "off"}).', '']
    text = []
    models = {name: info['export_dir'] for name, info in runs.items()}
    predictors = {name: Predictor.from_path(d, backend=settings['backend'],
                                            device=settings['device'])
                  for name, d in models.items()}  # loaded once, used for both splits
    for split_name, section, split in SPLITS:
        s = dict(settings, split=split, figure_rows=settings['figure_rows'])
        t0 = time.perf_counter()
        results, figure = evaluate_models(models, cfg['data'][section], s, predictors,
                                          progress=not args.quiet)
        summary = summarize(results, runs)
        # The sim_only -> oracle gap is the domain gap: it only means something on real data.
        gaps = gap_closed(summary) if split_name == 'real' else {}
        frames = next(iter(results.values()))['frames']
        data = cfg['data'][section]
        title = (f'{split_name}-style split: data.{section} ({data.get("format")}), split '
                 f'{split}, {frames} frames')
        report['splits'][split_name] = {
            'data': {'section': section, 'split': split, 'format': data.get('format'),
                     'root': data.get('root'), 'frames': frames},
            'eval_seconds': time.perf_counter() - t0,
            'summary': summary, 'gap_closed': gaps, 'runs': results,
        }
        table = table_rows(summary, counts)
        text += [render(table, title=title), *gap_lines(gaps, summary), '']
        md += [render(table, markdown=True, title=title), '', *gap_lines(gaps, summary), '']
        if figure:
            first = [f'{row}_s{seeds[0]}' for row, _, _ in rows]
            fig_rows = [(frame, {n.rsplit('_s', 1)[0]: preds[n] for n in first})
                        for frame, preds in figure]
            path = save_figure(out / f'eval_{split_name}.png', fig_rows, s)
            md += [f'![{split_name} split, seed {seeds[0]}]({path.name})', '']
    train_s = sum(i['seconds'] or 0 for i in runs.values() if not i['reused'])
    report['train_seconds'] = train_s
    report['total_seconds'] = time.perf_counter() - t_start
    md += [f'Training time this invocation: {train_s / 60:.1f} min '
           f'({sum(not i["reused"] for i in runs.values())} runs trained, '
           f'{sum(i["reused"] for i in runs.values())} reused); total '
           f'{report["total_seconds"] / 60:.1f} min.', '']
    write_json(out / 'compare.json', report)
    (out / 'compare.md').write_text('\n'.join(md))
    print('\n'.join(text))
    print(f'wrote {out / "compare.json"}, {out / "compare.md"}')
    return json_safe(report)


def main(argv=None):
    """Command-line entry point; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        run_compare(args)
    except CompareError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 3
    except (ModelLoadError, DataError, ValueError, KeyError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())

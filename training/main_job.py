"""The whole story in one command, on built-in data: train, evaluate, export, replay live.

``python -m training.main_job [--quick] [--fresh] [--workdir outputs/main_job]``
(README command 1: ``./scripts/main_job.sh``, which also creates the virtual environment).

Steps, each a separate tool run with its output streamed and logged under WORKDIR/steps:

1. generate procedural sim (Virtual KITTI 2 tree) and real-style (KITTI tree) data
2. train the main model, the recipe ``--model`` names (``RECIPES``; default: the recipe
   that meets the main job's targets on both CPUs measured, the floor and sim_only beaten
   and a label-change share of at least 0.25, with the most margin; docs/benchmarks.md)
3. train the sim-only baseline (``--method sim_only``) and fit the ``mean_prior`` floor;
   ``--with-oracle`` adds the oracle
4. export every model to ONNX (``sim2real_perception.onnx_export``, with a parity check)
5. evaluate them offline on the real-style eval split, PyTorch backend
6. the same with ONNX Runtime (the node's backend)
7. write the same eval frames to an mcap rosbag2 (``training.make_bag``)
8. start ``depth_seg_node`` as its own process with ``config/depth_seg.yaml`` and the main
   model, replay the bag through it in lock-step (``training.replay``, recording what went
   in and came back to ``replay/outputs_bag``, an mcap rosbag2 for Foxglove / RViz), stop
   the node
9. print one report: offline vs replay metrics (same model, same frames: they must agree),
   the main model vs sim-only and the floor, latency and rate, total time, the figures

Finished steps are reused on the next run (``--fresh`` redoes everything; a changed option
redoes the step it changes and everything after it). Everything stays on this machine: DDS
discovery is limited to localhost.
"""
import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from sim2real_perception.labels import THING_CLASSES

REPO = Path(__file__).resolve().parent.parent
NODE_PARAMS = REPO / 'config' / 'depth_seg.yaml'
IMAGE_TOPIC = '/camera/image_raw'
CAMERA_INFO_TOPIC = '/camera/camera_info'
#: The replay step's recording (training.bag_recorder), under WORKDIR/replay/.
OUTPUTS_BAG = 'outputs_bag'
#: Relative difference up to which offline and replay metrics count as equal.
AGREE_RTOL = 1e-5
DEPTH_KEYS = ('abs_rel', 'sq_rel', 'rmse', 'rmse_log', 'a1', 'a2', 'a3', 'n_pixels')
SEG_KEYS = ('miou', 'pixel_acc', 'n_pixels')
#: The sim camera clones the real-style one (Virtual KITTI 2 clones KITTI's camera), so the
#: domain gap is appearance only; bench/bench_transfer.py uses the same data settings.
SIM_CAMERA = ('cam_height_m=1.65', 'pitch_deg=1.0')
#: Extra overrides per method: sim_only is the no-adaptation baseline, so its sim frames
#: keep their clean look (the preset randomises them for the twin-VAE).
METHOD_SETS = {'sim_only': ('data.sim.appearance_aug=0.0',)}
#: ``sim_only_region_kitti_bld_st_keep8``'s overrides, which the default recipe extends.
BLD_ST_KEEP8 = ('data.sim.region_aug=1.0', 'data.sim.relabel={van: car}',
                'data.sim.region_keep_hue=[building]', 'train.self_train_steps=250',
                'train.self_train_batch=2', 'train.self_train_sim=false',
                'train.self_train_keep=0.8')
#: The main model's recipes: name -> (training method, overrides). Each is a row of
#: bench/bench_transfer.py and trains at the preset's full budget.
RECIPES = {
    'twin_vae': ('twin_vae', ()),   # the cpu preset's twin-VAE (row twin_vae)
    # sim_only on sim frames with the camera-photo and the per-region randomisation
    'sim_only_region': ('sim_only', ('data.sim.region_aug=1.0',)),
    # the same trained in the real labels' taxonomy: VKITTI 2's vans read as car, as KITTI's
    # annotators label them (row sim_only_region_kitti)
    'sim_only_region_kitti': ('sim_only', ('data.sim.region_aug=1.0',
                                           'data.sim.relabel={van: car}')),
    # then 250 steps of offline self-training on its own labels of the real frames, 2 sim + 2
    # real frames a step (row sim_only_region_kitti_st850_b2, about 2.6 min more)
    'sim_only_region_kitti_st': ('sim_only', ('data.sim.region_aug=1.0',
                                              'data.sim.relabel={van: car}',
                                              'train.self_train_steps=250',
                                              'train.self_train_batch=2')),
    # the same with the buildings' hue kept (row sim_only_region_kitti_bld_st850_b2): the
    # best labels of the benchmark, depth less steady
    'sim_only_region_kitti_bld_st': ('sim_only', ('data.sim.region_aug=1.0',
                                                  'data.sim.relabel={van: car}',
                                                  'data.sim.region_keep_hue=[building]',
                                                  'train.self_train_steps=250',
                                                  'train.self_train_batch=2')),
    # the buildings' hue kept, 850 steps, then 250 self-training steps on 2 of its own
    # labelled real frames alone, 80 % of each class's pixels kept (row
    # sim_only_region_kitti_bld_st850_r2_keep8, about 1.5 min more than its 850 steps)
    'sim_only_region_kitti_bld_st_keep8': ('sim_only', BLD_ST_KEEP8),
    # that with sim cars, trucks, poles, signs, lights and guard rails pasted
    # onto the self-trained real frames (row sim_only_region_kitti_bld_st850_r2_keep8_paste)
    'sim_only_region_kitti_bld_st_paste': (
        'sim_only', BLD_ST_KEEP8 + (f'train.self_train_paste=[{", ".join(THING_CLASSES)}]',)),
    # the default: that with each upright surface at the ground depth of its foot, read from
    # its own labels at inference (row sim_only_region_kitti_bld_st850_r2_keep8_paste_contact)
    'sim_only_region_kitti_bld_st_paste_contact': (
        'sim_only', BLD_ST_KEEP8 + (f'train.self_train_paste=[{", ".join(THING_CLASSES)}]',
                                    'model.ground_contact=true')),
}
#: --quick runs every stage at the test preset's few steps, self-training included.
QUICK_SELF_TRAIN = 'train.self_train_steps=4'
DEFAULT_MODEL = 'sim_only_region_kitti_bld_st_paste_contact'

#: Data sizes and the training preset per mode (all overridable on the command line).
PROFILES = {
    # full = bench/bench_transfer.py's data (its seed-0 runs are the main job's trainings)
    'full': {'config': 'cpu', 'threads': 0, 'sim_frames': 600, 'real_frames': 600,
             'height': 192, 'width': 640, 'frames_per_sequence': 50, 'eval_frames': 0,
             'val_fraction': 0.1, 'baseline_steps': 300},
    'quick': {'config': 'test', 'threads': 1, 'sim_frames': 8, 'real_frames': 16,
              'height': 64, 'width': 192, 'frames_per_sequence': 4, 'eval_frames': 0,
              'val_fraction': 0.25, 'baseline_steps': 0},
}


def method_sets(method, baseline_steps=0, quick=False):
    """Return a run's own overrides: a recipe's, ``METHOD_SETS`` and the baselines' steps."""
    if method in RECIPES:
        own = list(RECIPES[method][1])
        if quick and any(o.startswith('train.self_train_steps=') for o in own):
            own.append(QUICK_SELF_TRAIN)
        return own
    own = list(METHOD_SETS.get(method, ()))
    if method in ('sim_only', 'oracle') and baseline_steps:
        own.append(f'train.supervised_steps={int(baseline_steps)}')
    return own


def _ros_env():
    """Keep DDS on this machine and give the run a domain of its own (unless set)."""
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', str(1 + os.getpid() % 100))
    os.environ.setdefault('PYTHONUNBUFFERED', '1')


class Job:
    """Paths and command lines of one main-job run."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.data = self.work / 'data'
        self.runs = self.work / 'runs'
        self.bag = self.work / 'eval_bag'
        self.main = args.model
        self.methods = [self.main, 'sim_only', 'mean_prior'] + \
            (['oracle'] if args.with_oracle else [])
        self.sets = [f'data.{s}.root={self.data}' for s in ('sim', 'real', 'eval')]
        self.sets += [f'data.{s}.val_fraction={args.val_fraction}' for s in ('real', 'eval')]
        self.sets += list(args.set)

    def export(self, method):
        """Return the exported model dir of ``method``."""
        return self.runs / method / 'export'

    def py(self, module, *argv):
        """Return ``python -m module argv...`` run by this interpreter."""
        return [sys.executable, '-m', module, *map(str, argv)]

    def with_sets(self, argv):
        """Append every config override as its own ``--set KEY=VALUE``."""
        for item in self.sets:
            argv += ['--set', item]
        return argv


def build_parser():
    """Return the CLI parser (every option documented in ``--help``)."""
    p = argparse.ArgumentParser(
        prog='python -m training.main_job', description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 2)[2] + '\n\nExit status: 0 done and offline/replay '
        'metrics agree, 1 a step failed (its log is named), 3 the metrics disagree, '
        '130 interrupted. Docs: docs/evaluation.md#the-main-job',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--workdir', default='outputs/main_job',
                   help='where everything goes (default: outputs/main_job)')
    p.add_argument('--fresh', action='store_true',
                   help='redo every step instead of reusing finished ones')
    p.add_argument('--quick', action='store_true',
                   help='tiny data and the `test` preset: the whole job in 1-3 minutes on 2 '
                        'cores (numbers meaningless; used by the test suite)')
    p.add_argument('--model', default=DEFAULT_MODEL, choices=sorted(RECIPES),
                   help='the main model: the recipe trained, served by the node in the '
                        f'replay and compared with sim_only and the floor (default: '
                        f'{DEFAULT_MODEL}; twin_vae: the cpu preset\'s twin-VAE; '
                        'sim_only_region: sim_only on sim frames with the camera-photo and '
                        'per-region randomisation; sim_only_region_kitti: the same with vans '
                        'learnt as car, the real labels\' taxonomy; sim_only_region_kitti_st: '
                        'that, then 250 steps of self-training on its own labels of the real '
                        'frames; sim_only_region_kitti_bld_st: the same keeping the '
                        'buildings\' hue; sim_only_region_kitti_bld_st_keep8: that with the '
                        'self-training steps on 2 real frames alone, 80 %% of each class\'s '
                        'pixels kept as labels; sim_only_region_kitti_bld_st_paste: that with '
                        'sim objects pasted onto those real frames; '
                        'sim_only_region_kitti_bld_st_paste_contact: that with each upright '
                        'surface at the ground depth of its foot)')
    p.add_argument('--with-oracle', action='store_true',
                   help='also train and evaluate the oracle baseline (real labels)')
    p.add_argument('--config', default=None,
                   help='training/eval preset or YAML (default: cpu; test with --quick)')
    p.add_argument('--sim-frames', type=int, default=None,
                   help='procedural sim frames (default: 600; 8 with --quick)')
    p.add_argument('--real-frames', type=int, default=None,
                   help='procedural real-style frames; the last --val-fraction of every '
                        'drive is the eval split (default: 600; 16 with --quick)')
    p.add_argument('--height', type=int, default=None,
                   help='generated frame height (default: 192; 64 with --quick)')
    p.add_argument('--width', type=int, default=None,
                   help='generated frame width (default: 640, KITTI aspect; 192 with --quick)')
    p.add_argument('--frames-per-sequence', type=int, default=None,
                   help='frames per generated drive/scene (default: 50; 4 with --quick)')
    p.add_argument('--val-fraction', type=float, default=None,
                   help='fraction of each real drive held out for evaluation and replay '
                        '(default: 0.1; 0.25 with --quick)')
    p.add_argument('--eval-frames', type=int, default=None,
                   help='evaluate and replay at most N eval frames, evenly spaced (0 = all)')
    p.add_argument('--seed', type=int, default=0, help='data and training seed (default: 0)')
    p.add_argument('--baseline-steps', type=int, default=None,
                   help='train.supervised_steps of sim_only and the oracle (default: 300, about '
                        "a third of the cpu preset's 850, so the job stays within 15 minutes; 0 "
                        "= the preset's; the benchmark's sim_only_300 row)")
    p.add_argument('--threads', type=int, default=None,
                   help='CPU threads per step (OMP_NUM_THREADS; default: the environment\'s, '
                        'else all cores; 1 with --quick). Use 1 on a machine others are busy on')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='config override for training and evaluation, repeatable, e.g. '
                        'train.stage1_steps=200')
    return p


def resolve_args(argv=None):
    """Parse ``argv`` and fill unset sizes from the profile (full or quick)."""
    args = build_parser().parse_args(argv)
    profile = PROFILES['quick' if args.quick else 'full']
    for key, value in profile.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def train_hint(run_dir):
    """Describe how far a training run got, from the newest row of its CSV logs."""
    logs = sorted(Path(run_dir, 'logs').glob('*.csv'), key=lambda p: p.stat().st_mtime)
    if not logs:
        return 'starting'
    rows = logs[-1].read_text().strip().splitlines()
    if len(rows) < 2:
        return f'{logs[-1].stem} started'
    row = dict(zip(rows[0].split(','), rows[-1].split(',')))
    text = f'{logs[-1].stem} step {row.get("step", "?")}'
    if row.get('images_per_s'):
        text += f', {float(row["images_per_s"]):.2f} images/s'
    if row.get('total'):
        text += f', loss {float(row["total"]):.3f}'
    return text


# -- the live replay step --------------------------------------------------------------------
def node_command(model_dir):
    """Return the command line that starts depth_seg_node with the shipped params file."""
    exe = Path(sys.executable).with_name('depth_seg_node')
    cmd = [str(exe)] if exe.is_file() else \
        [sys.executable, '-m', 'sim2real_perception.depth_seg_node']
    return cmd + ['--ros-args', '--params-file', str(NODE_PARAMS),
                  '-p', f'model_path:={model_dir}', '-p', 'backend:=onnxruntime',
                  '-p', 'device:=cpu', '-r', f'image:={IMAGE_TOPIC}',
                  '-r', f'camera_info:={CAMERA_INFO_TOPIC}']


def _tail(path, lines=15):
    try:
        return '\n'.join(Path(path).read_text(errors='replace').splitlines()[-lines:])
    except OSError:
        return ''


def start_node(model_dir, log_path, timeout=90.0):
    """Start the node process; return it once it logs that it subscribed."""
    from .steps import StepFailed
    cmd = node_command(model_dir)
    print(f'  $ {shlex.join(cmd)}', flush=True)
    log = open(log_path, 'w', encoding='utf-8')
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)  # we stop it ourselves, after the report
    log.close()
    deadline = time.monotonic() + timeout
    while 'subscribed to' not in Path(log_path).read_text(errors='replace'):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_node(proc)
            raise StepFailed(f'depth_seg_node did not start (exit {proc.returncode}); '
                             f'log {log_path}:\n{_tail(log_path)}')
        time.sleep(0.2)
    print(f'  node up (pid {proc.pid}), log: {log_path}', flush=True)
    return cmd, proc


def stop_node(proc, timeout=20.0):
    """Stop the node as Ctrl-C would (SIGINT), escalating only if it hangs; return its code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return proc.returncode


def live_replay(job, eval_cfg):
    """Run the node process, replay the bag through it in lock-step, stop it; return a dict."""
    from . import replay
    out = job.work / 'replay'
    out.mkdir(parents=True, exist_ok=True)
    cmd, proc = start_node(job.export(job.main), out / 'node.log')
    try:
        opts = replay.ReplayOptions(
            bag=str(job.bag), mode='lockstep', image_topic=IMAGE_TOPIC, depth_topic='/depth',
            labels_topic='/segmentation', timeout=60.0, idle=3.0,
            min_depth=float(eval_cfg['min_depth']), max_depth=float(eval_cfg['max_depth']),
            garg_crop=bool(eval_cfg['garg_crop']),
            median_scaling=bool(eval_cfg['median_scaling']), out=str(out),
            record=str(out / OUTPUTS_BAG))
        report = replay.run_replay(opts)
    finally:
        code = stop_node(proc)
    print(replay.format_report(report), flush=True)
    print(f'  node stopped with SIGINT, exit code {code}', flush=True)
    report['node'] = {'command': cmd, 'exit_code': code, 'clean_stop': code == 0,
                      'log': str(out / 'node.log')}
    report = replay._clean(report)
    (out / 'replay.json').write_text(json.dumps(report, indent=2, default=replay._json_default))
    if report['interrupted']:
        raise KeyboardInterrupt
    return report


# -- the report ------------------------------------------------------------------------------
def _num(value):
    return float(value) if isinstance(value, (int, float)) and value is not None else math.nan


def compare(offline, replayed):
    """Return rows ``(metric, offline, replay, |diff|)`` and the max relative difference."""
    rows, worst = [], 0.0
    for section, keys in (('depth', DEPTH_KEYS), ('segmentation', SEG_KEYS)):
        a, b = offline.get(section) or {}, replayed.get(section) or {}
        for key in keys:
            x, y = _num(a.get(key)), _num(b.get(key))
            diff = abs(x - y)
            rel = diff / max(abs(x), 1e-12) if math.isfinite(diff) else math.inf
            if math.isnan(x) and math.isnan(y):
                diff = rel = 0.0
            worst = max(worst, rel)
            rows.append((f'{section}.{key}', x, y, diff))
    return rows, worst


def metrics_diff(a, b):
    """Return the largest absolute difference over the scalar metrics of two results."""
    return max((r[3] for r in compare(a, b)[0] if math.isfinite(r[3])), default=0.0)


def build_report(job, pipe, eval_torch, eval_ort, rep):
    """Assemble the final report dict from the eval.json files and the replay report."""
    models_ort, models_torch = eval_ort['models'], eval_torch['models']
    rows, worst = compare(models_ort[job.main], rep)
    frames = models_ort[job.main]['frames']
    lat = rep['latency_ms']
    return {
        'workdir': str(job.work), 'config': job.args.config, 'quick': job.args.quick,
        'main_model': job.main,
        'data': {'root': str(job.data), 'sim_frames': job.args.sim_frames,
                 'real_frames': job.args.real_frames,
                 'size': [job.args.height, job.args.width], 'eval_frames': frames},
        'offline': {name: {k: r[k] for k in ('depth', 'segmentation', 'frames', 'runtime')}
                    for name, r in models_ort.items()},
        'offline_torch': {name: {k: r[k] for k in ('depth', 'segmentation', 'frames',
                                                   'runtime')}
                          for name, r in models_torch.items()},
        'torch_vs_onnxruntime_max_abs_diff': max(
            metrics_diff(models_torch[n], models_ort[n]) for n in models_ort),
        'replay': {k: rep[k] for k in ('mode', 'frames_in_bag', 'frames_sent',
                                       'frames_answered', 'frames_dropped', 'latency_ms',
                                       'achieved_rate_hz', 'depth', 'segmentation', 'node')},
        'offline_vs_replay': {
            'model': job.main, 'backend': 'onnxruntime', 'frames': frames,
            'rows': [{'metric': m, 'offline': x, 'replay': y, 'abs_diff': d}
                     for m, x, y, d in rows],
            'max_abs_diff': max((r[3] for r in rows), default=0.0),
            'max_rel_diff': worst, 'tolerance_rel': AGREE_RTOL,
            'agree': worst <= AGREE_RTOL and rep['frames_answered'] == frames,
        },
        'latency_ms': {k: lat[k] for k in ('p50', 'p90', 'p99')},
        'rate_hz': rep['achieved_rate_hz'],
        'seconds': {'total': pipe.elapsed(), 'steps': pipe.timings, 'reused': pipe.reused,
                    'reused_steps_took': pipe.recorded},
        'figures': {'offline': str(job.work / 'eval' / 'onnxruntime' / 'eval.png'),
                    'replay': rep.get('figure'),
                    'data_preview': str(job.data / 'preview.png')},
    }


def _f(value, digits=4):
    return '-' if value is None or not math.isfinite(value) else f'{value:.{digits}f}'


def name_width(offline):
    """Width of the report's method column: the longest method name, at least 16."""
    return max([16, *(len(n) + 2 for n in offline)])


def verdict_lines(offline, main):
    """Say whether the main model beats the floor and sim_only, and how it follows the image."""
    if main not in offline:
        return []
    ours = offline[main]
    gt = ours['segmentation'].get('gt_label_change_share')
    w = name_width(offline)
    lines = [f'  {"ground truth":<{w}}{"":>57}{_f(gt, 3):>8}',
             '  LblChg: share of pixels whose label differs from that pixel\'s most frequent '
             'label over the frames']
    for other in ('mean_prior', 'sim_only'):
        if other not in offline:
            continue
        o = offline[other]
        depth_ok = _num(ours['depth']['abs_rel']) < _num(o['depth']['abs_rel'])
        seg_ok = _num(ours['segmentation']['miou']) > _num(o['segmentation']['miou'])
        lines.append(f'  {main} vs {other}: AbsRel {"better" if depth_ok else "NOT better"}'
                     f', mIoU {"better" if seg_ok else "NOT better"}')
    return lines


def format_report(r):
    """Return the final report as text."""
    cmp_ = r['offline_vs_replay']
    rep = r['replay']
    w = name_width(r['offline'])
    lines = ['', '=' * 78, 'sim2real_perception main job: report', '=' * 78,
             f'data: procedural, {r["data"]["sim_frames"]} sim + {r["data"]["real_frames"]} '
             f'real-style frames at {r["data"]["size"][1]}x{r["data"]["size"][0]}; '
             f'eval = {r["data"]["eval_frames"]} held-out real-style frames; preset '
             f'{r["config"]}', '',
             'Offline evaluation (training.evaluate, ONNX Runtime), real-style eval split:',
             f'  {"method":<{w}}{"AbsRel":>8}{"SqRel":>8}{"RMSE":>8}{"RMSElog":>9}'
             f'{"d<1.25":>8}{"mIoU":>8}{"PixAcc":>8}{"LblChg":>8}']
    for name, m in r['offline'].items():
        d, s = m['depth'], m['segmentation']
        lines.append(f'  {name:<{w}}{_f(d["abs_rel"], 3):>8}{_f(d["sq_rel"], 3):>8}'
                     f'{_f(d["rmse"], 3):>8}{_f(d["rmse_log"], 3):>9}{_f(d["a1"], 3):>8}'
                     f'{_f(s["miou"], 3):>8}{_f(s["pixel_acc"], 3):>8}'
                     f'{_f(s.get("label_change_share"), 3):>8}')
    lines += verdict_lines(r['offline'], r['main_model'])
    lines.append(f'  PyTorch backend vs ONNX Runtime: max |difference| over all metrics '
                 f'{r["torch_vs_onnxruntime_max_abs_diff"]:.2e}')
    lines += ['', f'Offline vs replay through depth_seg_node ({cmp_["model"]}, '
                  f'{cmp_["backend"]}, the same {cmp_["frames"]} frames):',
              f'  {"metric":<24}{"offline":>14}{"replay":>14}{"|diff|":>12}']
    for row in cmp_['rows']:
        digits = 0 if row['metric'].endswith('n_pixels') else 6
        lines.append(f'  {row["metric"]:<24}{_f(row["offline"], digits):>14}'
                     f'{_f(row["replay"], digits):>14}{row["abs_diff"]:>12.2e}')
    verdict = 'AGREE' if cmp_['agree'] else 'DISAGREE'
    lines.append(f'  max |diff| {cmp_["max_abs_diff"]:.2e} (relative {cmp_["max_rel_diff"]:.2e}'
                 f', tolerance {cmp_["tolerance_rel"]:g}) -> {verdict}')
    lat = r['latency_ms']
    node = rep['node']
    lines += ['', f'Replay ({rep["mode"]}): {rep["frames_sent"]} frames sent, '
                  f'{rep["frames_answered"]} answered, {rep["frames_dropped"]} dropped; '
                  f'latency p50 {_f(lat["p50"], 1)} / p90 {_f(lat["p90"], 1)} / p99 '
                  f'{_f(lat["p99"], 1)} ms; {r["rate_hz"]:.1f} frames/s',
              f'Node: own process ({Path(node["command"][0]).name} --params-file '
              f'config/depth_seg.yaml), stopped with SIGINT, exit code {node["exit_code"]}'
              + (' (clean)' if node['clean_stop'] else ' (NOT clean)')]
    secs = r['seconds']
    took = secs.get('reused_steps_took', {})
    steps = ', '.join(f'{k} {took[k]:.0f}s reused' if k in took else f'{k} {v:.0f}s'
                      for k, v in secs['steps'].items())
    first = sum(secs['steps'].values()) + sum(took.values())
    lines += ['', f'Total time: {secs["total"]:.0f} s this run'
              + (f', {first:.0f} s of steps counting reused ones as they ran' if took else '')
              + f' ({steps})', 'Figures:']
    lines += [f'  {k:<13}{v}' for k, v in r['figures'].items() if v]
    lines += [f'Report: {r["workdir"]}/report.json', '=' * 78]
    return '\n'.join(lines)


def config_digest(preset, overrides):
    """Return a digest of the resolved config: an edited preset file changes it."""
    import hashlib
    from sim2real_perception.config import load_config
    from .evaluate import json_safe
    text = json.dumps(json_safe(load_config(preset, list(overrides))), sort_keys=True)
    return 'config sha256 ' + hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the job ---------------------------------------------------------------------------------
def run(args):
    """Run every step; return the report dict."""
    from .steps import Pipeline
    job = Job(args)
    # data, train and ONNX per method, evaluate x2, bag, replay, report
    pipe = Pipeline(job.work, fresh=args.fresh, total=6 + 2 * len(job.methods))
    print(f'[main_job] workdir {job.work}; preset {args.config}; ROS_DOMAIN_ID '
          f'{os.environ["ROS_DOMAIN_ID"]} (localhost only)', flush=True)
    pipe.run('data', job.py(
        'training.data.make_procedural', '--out', job.data, '--sim-frames', args.sim_frames,
        '--real-frames', args.real_frames, '--height', args.height, '--width', args.width,
        '--frames-per-sequence', args.frames_per_sequence, '--seed', args.seed,
        *[a for item in SIM_CAMERA for a in ('--sim-style', item)],
        '--preview', job.data / 'preview.png', '--quiet'),
        f'generate {args.sim_frames} sim + {args.real_frames} real-style frames '
        f'({args.width}x{args.height})', outputs=[job.data])
    what = {'twin_vae': 'train the twin-VAE, stage 1 + stage 2',
            'sim_only_region': 'train sim_only on randomised sim frames (main model)',
            'sim_only_region_kitti': 'train sim_only on randomised sim frames, vans as car '
                                     '(main model)',
            'sim_only_region_kitti_st': 'train sim_only on randomised sim frames, vans as car, '
                                        'then self-train on the real frames (main model)',
            'sim_only_region_kitti_bld_st': 'train sim_only on randomised sim frames (buildings '
                                            'keep their hue), vans as car, then self-train on '
                                            'the real frames (main model)',
            'sim_only_region_kitti_bld_st_keep8': 'train sim_only on randomised sim frames '
                                                  '(buildings keep their hue), vans as car, '
                                                  'then self-train on the real frames alone '
                                                  '(main model)',
            'sim_only_region_kitti_bld_st_paste': 'train sim_only on randomised sim frames '
                                                  '(buildings keep their hue), vans as car, '
                                                  'then self-train on the real frames with '
                                                  'sim objects pasted in (main model)',
            'sim_only_region_kitti_bld_st_paste_contact':
                'train sim_only on randomised sim frames (buildings keep their hue), vans as '
                'car, then self-train on the real frames with sim objects pasted in; depth of '
                'upright surfaces from their ground contact (main model)',
            'sim_only': 'train the sim-only baseline (no adaptation)',
            'mean_prior': 'fit the mean_prior floor (per-pixel sim statistics)',
            'oracle': 'train the oracle baseline (real labels)'}
    for method in job.methods:
        own = method_sets(method, args.baseline_steps, args.quick)
        sets = [*own, *job.sets]
        pipe.run(f'train_{method}', job.with_sets(job.py(
            'training.train', '--config', args.config, '--method',
            RECIPES.get(method, (method,))[0], '--stage', 'all',
            '--seed', args.seed, '--run-dir', job.runs / method, '--no-progress',
            *[a for item in own for a in ('--set', item)])),
            what[method], outputs=[job.runs / method], resume_args=['--resume'],
            hint=lambda m=method: train_hint(job.runs / m),
            key_extra=config_digest(args.config, sets))
    for method in job.methods:
        pipe.run(f'onnx_{method}', job.py('sim2real_perception.onnx_export', '--model',
                                          job.export(method)),
                 f'export {method} to ONNX', outputs=[job.export(method) / 'model.onnx'])
    models = [a for m in job.methods for a in ('--model', f'{m}={job.export(m)}')]
    evals = {}
    for backend in ('torch', 'onnxruntime'):
        out = job.work / 'eval' / backend
        pipe.run(f'evaluate_{backend}', job.with_sets(job.py(
            'training.evaluate', *models, '--config', args.config, '--backend', backend,
            '--batch-size', 1, '--max-frames', args.eval_frames, '--out', out, '--quiet')),
            f'offline evaluation, {backend} backend', outputs=[out])
        evals[backend] = json.loads((out / 'eval.json').read_text())
    pipe.run('make_bag', job.with_sets(job.py(
        'training.make_bag', '--data', args.config, '--section', 'eval', '--max-frames',
        args.eval_frames, '--storage', 'mcap', '--out', job.bag, '--quiet')),
        'write the eval frames to an mcap rosbag2', outputs=[job.bag])
    eval_cfg = evals['onnxruntime']['eval']
    key = json.dumps({'model': str(job.export(job.main)), 'bag': str(job.bag),
                      'params': str(NODE_PARAMS), 'record': OUTPUTS_BAG})
    rep = pipe.step('replay', key, 'depth_seg_node process + lock-step bag replay',
                    lambda: live_replay(job, eval_cfg), outputs=[job.work / 'replay'])
    pipe._announce('report', 'offline vs replay')
    report = build_report(job, pipe, evals['torch'], evals['onnxruntime'], rep)
    (job.work / 'report.json').write_text(json.dumps(report, indent=2, default=str))
    text = format_report(report)
    (job.work / 'report.txt').write_text(text + '\n')
    print(text, flush=True)
    return report


def main(argv=None):
    """Run the CLI; return the exit status."""
    args = resolve_args(argv)
    _ros_env()
    if args.threads:
        os.environ['OMP_NUM_THREADS'] = str(args.threads)
    from .steps import StepFailed
    try:
        report = run(args)
    except StepFailed as exc:
        print(f'\n[main_job] FAILED: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\n[main_job] interrupted; finished steps are kept (run again to resume)',
              file=sys.stderr)
        return 130
    return 0 if report['offline_vs_replay']['agree'] else 3


if __name__ == '__main__':
    sys.exit(main())

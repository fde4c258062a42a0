"""Soak depth_seg_node: does it keep serving, at steady latency and memory, for a long run?

    .venv/bin/python bench/soak_node.py [--minutes 10] [--rate 30] [--size 1242x375]
        [--preset cpu] [--backend onnxruntime] [--threads 0]

The node runs as its console script (``depth_seg_node``, what users run) in its own process
with a randomly initialised model of ``--preset``, exported with ONNX (cached like
``bench/bench_node.py``). This process is the camera (best-effort rgb8 frames at ``--rate``
Hz over loopback DDS with the shipped shared-memory profile) and the consumer of depth,
segmentation and segmentation_color. Every minute it samples:

* frames sent, answered (all three outputs arrived) and dropped, per minute of sending;
* latency p50 / p99 from publishing a frame to its last output;
* the node process's RSS, CPU use (share of one core), open file descriptors and threads,
  from ``/proc/<pid>``;
* the node's own counters from ``/diagnostics`` (frames in, processed, dropped, failed).

Writes ``bench/results/soak_node.json`` and prints a verdict against these targets:

* no answer missing beyond the node's newest-frame-only design (older frames replaced in
  its KEEP_LAST input queue or dropped from its own queue): every frame the node took in
  is processed or counted as dropped, every processed frame's answer arrives, none
  failed, and every minute has answers;
* RSS growth after the first minute at most 5 MB;
* p99 latency of the last minute within 15% of the second minute's;
* file descriptors and threads constant after the first minute.

Run it on a quiet machine: other load shows up as latency drift. Exit status 0 when every
target is met, 1 otherwise.
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'bench'))
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
os.environ.setdefault('ROS_DOMAIN_ID', str(60 + os.getpid() % 40))

from bench_node import load_average, parse_size, prepare_model, test_pattern  # noqa: E402
from sim2real_perception import dds  # noqa: E402

OUTPUT_TOPICS = ('depth', 'segmentation', 'segmentation_color')
TARGETS = {'rss_growth_mb': 5.0, 'p99_drift': 0.15}
COUNTERS = ('frames_in', 'processed', 'dropped', 'malformed', 'failed', 'nonfinite')
DIAG_PERIOD = 2.0  # seconds between the node's /diagnostics reports
CLK_TCK = os.sysconf('SC_CLK_TCK')


def proc_sample(pid):
    """RSS (MB), CPU seconds, open fds and threads of a process, from /proc."""
    status = Path(f'/proc/{pid}/status').read_text()
    fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
    stat = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return {'rss_mb': int(fields['VmRSS'].split()[0]) / 1024.0,
            'cpu_s': (int(stat[11]) + int(stat[12])) / CLK_TCK,
            'fds': len(os.listdir(f'/proc/{pid}/fd')),
            'threads': int(fields['Threads'])}


def node_command(model_dir, ns, backend, threads):
    exe = Path(sys.executable).parent / 'depth_seg_node'
    cmd = ([str(exe)] if exe.is_file() else [sys.executable, '-m',
                                             'sim2real_perception.depth_seg_node'])
    return cmd + ['--ros-args', '-r', f'__ns:={ns}', '--params-file',
                  str(REPO / 'config' / 'depth_seg.yaml'), '-p', f'model_path:={model_dir}',
                  '-p', f'backend:={backend}', '-p', 'device:=cpu', '-p', f'threads:={threads}',
                  '-p', 'log_period:=60.0', '-p', f'diagnostics_period:={DIAG_PERIOD}']


class Rig:
    """The camera publisher, the output subscribers and a /diagnostics listener."""

    def __init__(self, ctx, ns):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        self.ns = ns
        self.node = rclpy.create_node('soak_camera', namespace=ns, context=ctx)
        self.pub = self.node.create_publisher(Image, 'image', qos_profile_sensor_data)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.arrivals = {}  # stamp sec -> {topic: perf_counter}
        self.subs = [self.node.create_subscription(
            Image, t, lambda m, t=t: self._on_output(m, t), reliable) for t in OUTPUT_TOPICS]
        self.counts = {}
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=ctx)
        self.executor.add_node(self.node)

    def _on_output(self, msg, topic):
        self.arrivals.setdefault(msg.header.stamp.sec, {})[topic] = time.perf_counter()

    def _on_diag(self, array):
        for status in array.status:
            if status.name.startswith(f'{self.ns}/') and 'depth_seg' in status.name:
                self.counts = {kv.key: kv.value for kv in status.values}

    def complete(self, key):
        return len(self.arrivals.get(key, ())) == len(OUTPUT_TOPICS)

    def spin_until(self, condition, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not condition():
            self.executor.spin_once(timeout_sec=0.01)
        return condition()

    def settled_counts(self, period, timeout=30.0):
        """Return the node's counters once two reports in a row agree (the node is idle)."""
        end, last = time.monotonic() + timeout, None
        while time.monotonic() < end:
            self.spin_until(lambda: False, timeout=period + 0.5)
            if self.counts and self.counts == last:
                break
            last = dict(self.counts)
        return {k: int(v) for k, v in self.counts.items() if k in COUNTERS}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def _pct(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def summarise(minutes, sent, rig, samples):
    """Per-minute rows: frames by minute of sending, latency, and the /proc sample."""
    rows = []
    for m in range(minutes):
        keys = [k for k, (minute, _) in sent.items() if minute == m]
        done = [k for k in keys if rig.complete(k)]
        lat = [(max(rig.arrivals[k].values()) - sent[k][1]) * 1000 for k in done]
        prev = samples[m]
        cur = samples[m + 1]
        rows.append({
            'minute': m + 1, 'sent': len(keys), 'answered': len(done),
            'dropped': len(keys) - len(done),
            'latency_p50_ms': _pct(lat, 50), 'latency_p99_ms': _pct(lat, 99),
            'rss_mb': cur['rss_mb'],
            'cpu_percent': 100.0 * (cur['cpu_s'] - prev['cpu_s']) / max(
                cur['t'] - prev['t'], 1e-9),
            'fds': cur['fds'], 'threads': cur['threads']})
    return rows


def verdict(rows, counts, sent_total, answered_total):
    """Check the targets; return ``{name: {'ok': bool, ...}}``."""
    out = {}
    # By design the node keeps only the newest frame: older ones are replaced in its input
    # queue (KEEP_LAST input_depth, never reaching the node's callback) or dropped from its
    # own queue (counted). Missing beyond that: a frame taken in but neither processed nor
    # counted, a processed frame whose answer never arrived, a failure, or a minute
    # without answers (a stall).
    c = {k: counts.get(k, 0) for k in COUNTERS}
    unaccounted = c['frames_in'] - c['processed'] - c['dropped'] - c['failed'] - c['malformed']
    undelivered = c['processed'] - answered_total
    stalled = [r['minute'] for r in rows if r['answered'] == 0]
    out['answers'] = {'ok': bool(counts) and unaccounted == 0 and undelivered == 0
                      and c['failed'] == 0 and not stalled,
                      'sent': sent_total, 'frames_in': c['frames_in'],
                      'superseded_before_the_node': sent_total - c['frames_in'],
                      'dropped_by_node': c['dropped'], 'processed': c['processed'],
                      'answered': answered_total, 'failed': c['failed'],
                      'unaccounted': unaccounted, 'undelivered': undelivered,
                      'minutes_without_answers': stalled}
    if len(rows) >= 2:
        growth = max(r['rss_mb'] for r in rows[1:]) - rows[0]['rss_mb']
        out['rss'] = {'ok': growth <= TARGETS['rss_growth_mb'], 'growth_mb': growth,
                      'limit_mb': TARGETS['rss_growth_mb']}
        second, last = rows[1]['latency_p99_ms'], rows[-1]['latency_p99_ms']
        drift = (last / second - 1.0) if second and last else None
        out['p99'] = {'ok': drift is not None and drift <= TARGETS['p99_drift'],
                      'second_minute_ms': second, 'last_minute_ms': last, 'drift': drift,
                      'limit': TARGETS['p99_drift']}
        if len(rows) == 2:
            out['p99']['note'] = 'two minutes: the last minute is the second (use >= 3)'
        for key in ('fds', 'threads'):
            values = sorted({r[key] for r in rows})
            out[key] = {'ok': len(values) == 1, 'values': values}
    else:
        out['note'] = {'ok': True, 'text': 'one minute: RSS, p99 and fd/thread targets need '
                                           'at least two (--minutes 10 for the real soak)'}
    return out


def soak(args, model_dir, log_path):
    import rclpy
    from sim2real_perception.image_conversion import rgb_to_imgmsg
    ns = f'/soak_{os.getpid()}'
    env = {k: v for k, v in os.environ.items() if k != dds.ENV_VAR}  # node applies its own
    with open(log_path, 'wb') as log:
        proc = subprocess.Popen(node_command(model_dir, ns, args.backend, args.threads),
                                stdout=log, stderr=subprocess.STDOUT, env=env)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    rig = Rig(ctx, ns)
    width, height = args.size
    msg = rgb_to_imgmsg(test_pattern(width, height))
    sent = {}  # stamp sec -> (minute index, perf_counter at publish)
    try:
        if not rig.spin_until(lambda: rig.pub.get_subscription_count() > 0 and all(
                s.get_publisher_count() > 0 for s in rig.subs), timeout=90):
            raise RuntimeError(f'node did not come up; see {log_path}')
        stamp = 0
        for _ in range(100):  # warm up until frames come back (not counted)
            stamp += 1
            msg.header.stamp.sec = stamp
            rig.pub.publish(msg)
            if rig.spin_until(lambda: rig.complete(stamp), timeout=5.0) and stamp > 3:
                break
        base = rig.settled_counts(DIAG_PERIOD)  # the baseline counts every warm-up frame
        period = 1.0 / args.rate
        t0 = time.perf_counter()
        samples = [{**proc_sample(proc.pid), 't': t0}]
        next_t, minute = t0, 0
        while minute < args.minutes:
            now = time.perf_counter()
            if proc.poll() is not None:
                raise RuntimeError(f'node exited with {proc.returncode}; see {log_path}')
            if now - t0 >= 60.0 * (minute + 1):
                samples.append({**proc_sample(proc.pid), 't': now})
                minute += 1
                done = sum(rig.complete(k) for k, (m, _) in sent.items() if m == minute - 1)
                n = sum(1 for m, _ in sent.values() if m == minute - 1)
                print(f'[soak] minute {minute}/{args.minutes}: sent {n}, answered {done}, '
                      f'node RSS {samples[-1]["rss_mb"]:.1f} MB, fds {samples[-1]["fds"]}, '
                      f'threads {samples[-1]["threads"]}', flush=True)
                continue
            if now >= next_t:
                stamp += 1
                msg.header.stamp.sec = stamp
                rig.pub.publish(msg)
                sent[stamp] = (minute, time.perf_counter())
                next_t += period
                if next_t < now - 1.0:  # fell more than a second behind: do not burst
                    next_t = now
            else:
                rig.executor.spin_once(timeout_sec=min(next_t - now, 0.01))
        rig.spin_until(lambda: False, timeout=3.0)  # drain answers in flight
        end = rig.settled_counts(DIAG_PERIOD)
        counts = {k: end[k] - base.get(k, 0) for k in end}
        rows = summarise(args.minutes, sent, rig, samples)
        answered = sum(rig.complete(k) for k in sent)
        return rows, counts, len(sent), answered
    finally:
        rig.close()
        rclpy.try_shutdown(context=ctx)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_parser():
    """Return the CLI parser."""
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                epilog='Exit status 0 when every target is met, 1 otherwise. '
                                       'Docs: docs/benchmarks.md#soak',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--minutes', type=int, default=10, help='soak duration in minutes')
    p.add_argument('--rate', type=float, default=30.0, help='camera frame rate, Hz')
    p.add_argument('--size', type=parse_size, default='1242x375', help='camera frame WxH')
    p.add_argument('--preset', default='cpu', help='model preset (random weights)')
    p.add_argument('--backend', default='onnxruntime', choices=('onnxruntime', 'torch'),
                   help='node backend')
    p.add_argument('--threads', type=int, default=0, help='node inference threads (0 = all)')
    p.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'soak_node.json'),
                   help='JSON results file')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.minutes < 1:
        raise SystemExit('--minutes must be at least 1')
    print(dds.apply_default_profile(), flush=True)  # before rclpy.init: 1.4 MB frames
    model_dir = prepare_model(args.preset, REPO / 'outputs' / 'bench_node' / 'models')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix('.node.log')
    load_before = load_average()
    started = time.strftime('%Y-%m-%dT%H:%M:%S%z')
    rows, counts, n_sent, n_answered = soak(args, model_dir, log_path)
    result = {
        'started': started, 'minutes': args.minutes, 'rate_hz': args.rate,
        'size': f'{args.size[0]}x{args.size[1]}', 'preset': args.preset,
        'backend': args.backend, 'threads': args.threads, 'model_dir': str(model_dir),
        'machine': {'cpu': platform.processor() or platform.machine(),
                    'cores': os.cpu_count(), 'load_before': load_before,
                    'load_after': load_average()},
        'node_counts': counts, 'per_minute': rows,
        'verdict': verdict(rows, counts, n_sent, n_answered), 'node_log': str(log_path)}
    result['ok'] = all(v['ok'] for v in result['verdict'].values())
    out.write_text(json.dumps(result, indent=1))
    print(f'{"min":>4} {"sent":>6} {"answ":>6} {"drop":>5} {"p50 ms":>8} {"p99 ms":>8} '
          f'{"RSS MB":>8} {"CPU %":>6} {"fds":>4} {"thr":>4}')
    for r in rows:
        p50, p99 = (f'{r[k]:8.1f}' if r[k] is not None else f'{"-":>8}'
                    for k in ('latency_p50_ms', 'latency_p99_ms'))
        print(f'{r["minute"]:>4} {r["sent"]:>6} {r["answered"]:>6} {r["dropped"]:>5} {p50} '
              f'{p99} {r["rss_mb"]:8.1f} {r["cpu_percent"]:6.0f} {r["fds"]:>4} '
              f'{r["threads"]:>4}')
    for name, v in result['verdict'].items():
        detail = ', '.join(f'{k}={v[k]:.3g}' if isinstance(v[k], float) else f'{k}={v[k]}'
                           for k in v if k != 'ok')
        print(f'{"PASS" if v["ok"] else "FAIL"} {name}: {detail}')
    print(f'verdict: {"PASS" if result["ok"] else "FAIL"}; wrote {out}', flush=True)
    return 0 if result['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())

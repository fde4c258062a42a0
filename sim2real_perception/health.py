"""Frame counters and latency statistics for the node's /diagnostics and health log line.

Counters are cumulative since start (like ros2_benchmark); rate and latency percentiles
cover the frames finished since the previous report, so a slowdown shows at once. Plain
Python and numpy, no ROS imports, so the arithmetic is unit-testable.
"""
import threading
import time

import numpy as np

STAGES = ('conversion', 'preprocess', 'inference', 'postprocess', 'publish')
COUNTERS = ('frames_in', 'processed', 'dropped', 'malformed', 'failed', 'nonfinite')
#: Diagnostic levels (diagnostic_msgs/DiagnosticStatus constants, as bytes values).
OK, WARN, ERROR = 0, 1, 2


class FrameStats:
    """Thread-safe counters fed by the subscription callback and the worker thread."""

    def __init__(self, clock=time.monotonic):
        self._lock = threading.Lock()
        self._clock = clock
        self.counts = dict.fromkeys(COUNTERS, 0)
        self._window_counts = dict.fromkeys(COUNTERS, 0)
        self._latencies = []
        self._stage_sums = dict.fromkeys(STAGES, 0.0)
        self._window_start = clock()
        self.last_error = ''

    def count(self, name, n=1):
        """Add ``n`` to a counter (frames_in, dropped, malformed, failed, nonfinite)."""
        with self._lock:
            self.counts[name] += n
            self._window_counts[name] += n

    def error(self, text):
        """Remember the latest problem for the diagnostics message."""
        with self._lock:
            self.last_error = text

    def frame_done(self, latency_ms, stage_ms):
        """Record one processed frame: receipt-to-published latency and stage times (ms)."""
        with self._lock:
            self.counts['processed'] += 1
            self._window_counts['processed'] += 1
            self._latencies.append(latency_ms)
            for stage in STAGES:
                self._stage_sums[stage] += stage_ms.get(stage, 0.0)

    def report(self):
        """Return a summary of the window since the last call and start a new window."""
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._window_start, 1e-9)
            lat = np.asarray(self._latencies, dtype=np.float64)
            window = dict(self._window_counts)
            n = window['processed']
            stages = {s: (v / n if n else 0.0) for s, v in self._stage_sums.items()}
            out = {
                'counts': dict(self.counts),
                'window': window,
                'window_s': elapsed,
                'rate_hz': n / elapsed,
                'input_rate_hz': window['frames_in'] / elapsed,
                'latency_ms': ({f'p{q}': float(np.percentile(lat, q)) for q in (50, 90, 99)}
                               | {'max': float(lat.max())}) if lat.size else {},
                'stage_ms': stages,
                'last_error': self.last_error,
            }
            self._window_counts = dict.fromkeys(COUNTERS, 0)
            self._latencies = []
            self._stage_sums = dict.fromkeys(STAGES, 0.0)
            self._window_start = now
            return out


def level_and_message(report):
    """Diagnostic level and one-line message for a report."""
    w = report['window']
    if w['processed'] == 0 and w['frames_in'] > 0 and (w['malformed'] or w['failed']):
        return ERROR, 'every frame in the last period was rejected or failed'
    if w['malformed'] or w['failed']:
        return WARN, f'{w["malformed"]} malformed, {w["failed"]} failed frames in last period'
    if w['nonfinite']:
        return WARN, f'model produced NaN depth in {w["nonfinite"]} frames'
    if w['frames_in'] == 0:
        return OK, 'waiting for images'
    if w['dropped'] > w['processed']:
        return WARN, (f'dropping most frames ({w["dropped"]} dropped, {w["processed"]} '
                      f'processed): input faster than the model')
    return OK, f'processing at {report["rate_hz"]:.1f} Hz'


def key_values(report):
    """Flatten a report to (key, string value) pairs for diagnostic_msgs/KeyValue."""
    pairs = [(k, str(v)) for k, v in report['counts'].items()]
    pairs.append(('rate_hz', f'{report["rate_hz"]:.2f}'))
    pairs.append(('input_rate_hz', f'{report["input_rate_hz"]:.2f}'))
    for k, v in report['latency_ms'].items():
        pairs.append((f'latency_{k}_ms', f'{v:.2f}'))
    for k, v in report['stage_ms'].items():
        pairs.append((f'{k}_ms', f'{v:.2f}'))
    if report['last_error']:
        pairs.append(('last_error', report['last_error']))
    return pairs


def log_line(report):
    """One human-readable health line."""
    c, lat = report['counts'], report['latency_ms']
    latency = (f'latency p50 {lat["p50"]:.1f} p90 {lat["p90"]:.1f} p99 {lat["p99"]:.1f} ms'
               if lat else 'latency -')
    stages = ' '.join(f'{k} {v:.1f}' for k, v in report['stage_ms'].items())
    return (f'frames in {c["frames_in"]} processed {c["processed"]} dropped {c["dropped"]} '
            f'malformed {c["malformed"]} failed {c["failed"]} nan {c["nonfinite"]} | '
            f'{report["rate_hz"]:.1f} Hz | {latency} | stages ms: {stages}')

"""Ctrl-C under ``ros2 launch``: the console-script node gets SIGINT twice, and must not mind.

In a terminal Ctrl-C reaches the whole process group, so ``ros2 launch`` and the node both
get SIGINT and launch forwards another one: the node sees two signals a few milliseconds
apart, the second one during shutdown (``destroy_node``). Each try here starts the real
console script, waits until it spins, and sends two (or three) SIGINT/SIGTERM 0-50 ms apart;
every exit must be 0 with no traceback. A missing ``--params-file`` is refused by name.
"""
import random
import signal
import subprocess
import time

from test_node_process import console_command, node_env, NodeProcess

SPINNING = 'Fast DDS profile'  # main() logs this line just before it spins
SIGNAL_PLANS = ([(signal.SIGINT, signal.SIGINT)] * 20 + [(signal.SIGINT,) * 3] * 4
                + [(signal.SIGTERM, signal.SIGTERM)] * 4
                + [(signal.SIGINT, signal.SIGTERM, signal.SIGINT)] * 4)
PARALLEL = 4


def _wait_spinning(node, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if SPINNING in node.output():
            return True
        if node.proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_two_or_three_signals_during_shutdown_exit_0_without_traceback(model_dir, tmp_path):
    rng = random.Random(11)
    results = []
    for start in range(0, len(SIGNAL_PLANS), PARALLEL):
        batch = []
        for i, plan in enumerate(SIGNAL_PLANS[start:start + PARALLEL], start=start):
            cmd = console_command(model_dir, backend='torch', device='cpu')
            batch.append((plan, NodeProcess(cmd, tmp_path / f'node{i}.log', env=node_env())))
        for plan, node in batch:
            assert _wait_spinning(node), node.output()
            time.sleep(rng.uniform(0.0, 0.2))
            for n, sig in enumerate(plan):
                if n:
                    time.sleep(rng.uniform(0.0, 0.05))
                node.proc.send_signal(sig)
        for plan, node in batch:
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            rc = node.stop()
            out = node.output()
            results.append((tuple(s.name for s in plan), rc,
                            'Traceback' in out or 'KeyboardInterrupt' in out, out))
    bad = [r for r in results if r[1] != 0 or r[2]]
    doubles = sum(1 for r in results if r[0] == ('SIGINT', 'SIGINT'))
    print(f'{len(results)} tries ({doubles} with two SIGINTs): {len(bad)} bad')
    assert doubles >= 20
    assert not bad, '\n\n'.join(f'{plan} exit {rc}:\n{out}' for plan, rc, _, out in bad[:3])


def test_missing_params_file_is_refused_naming_the_path(model_dir, tmp_path):
    missing = tmp_path / 'nonexistent.yaml'
    cmd = console_command(model_dir, backend='torch', device='cpu')
    cmd[cmd.index('--params-file') + 1] = str(missing)
    proc = subprocess.run(cmd, env=node_env(), capture_output=True, text=True, timeout=90)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f'params file not found: {missing}' in out, out
    assert 'Traceback' not in out, out

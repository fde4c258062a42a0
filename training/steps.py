"""Re-runnable pipeline steps: each records what it ran, and is skipped when done.

A step is done when its ``steps/<name>.done.json`` marker holds the same key (its command
line, or the key an in-process step gives). Markers are written only after success, so a
killed job resumes at the step it was in. Once a step really runs, every later step runs
too (its inputs changed); ``fresh`` redoes everything. A step that re-runs because its key
or an earlier step changed starts from clean outputs; one that was merely interrupted may
resume (``resume_args``).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path


class StepFailed(RuntimeError):
    """A pipeline step failed; the message names the step and its log."""


class Pipeline:
    """Run numbered steps with progress lines, timings and a log file per step."""

    def __init__(self, workdir, fresh=False, total=None, env=None, prefix='main_job',
                 heartbeat=30.0):
        self.workdir = Path(workdir)
        self.marks = self.workdir / 'steps'
        self.marks.mkdir(parents=True, exist_ok=True)
        self.fresh = bool(fresh)
        self.dirty = False  # an earlier step ran in this invocation
        self.total = total
        self.index = 0
        self.prefix = prefix
        self.heartbeat = float(heartbeat)
        self.timings = {}
        self.reused = []
        self.recorded = {}  # reused step -> seconds it took when it ran
        self.t0 = time.monotonic()
        self.env = {**os.environ, **(env or {})}

    def _marker(self, name, kind='done'):
        return self.marks / f'{name}.{kind}.json'

    def _announce(self, name, text):
        self.index += 1
        total = f'/{self.total}' if self.total else ''
        elapsed = time.monotonic() - self.t0
        print(f'\n[{self.prefix} {self.index}{total}] {name}: {text}  (t+{elapsed:.0f} s)',
              flush=True)

    def _read(self, name, kind):
        try:
            return json.loads(self._marker(name, kind).read_text())
        except (OSError, ValueError):
            return None

    def done(self, name, key):
        """Tell whether ``name`` finished earlier with ``key`` (and nothing before it re-ran)."""
        if self.fresh or self.dirty:
            return False
        record = self._read(name, 'done')
        return record is not None and record.get('key') == key

    def _reuse(self, name):
        record = self._read(name, 'done')
        self.timings[name] = 0.0
        self.reused.append(name)
        self.recorded[name] = float(record.get('seconds', 0.0))
        return record

    def _prepare(self, name, key, outputs):
        """Start a step: clean its outputs unless it only resumes an interrupted run.

        Return True when resuming is safe (same key, nothing upstream changed).
        """
        started = self._read(name, 'started')
        resumable = not (self.fresh or self.dirty) and started is not None and \
            started.get('key') == key
        if not resumable:
            for path in outputs:
                path = Path(path).resolve()
                if self.workdir.resolve() not in path.parents:
                    raise ValueError(f'refusing to clean {path}: outside {self.workdir}')
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self._marker(name, 'done').unlink(missing_ok=True)
        self._marker(name, 'started').write_text(json.dumps({'key': key}))
        self.dirty = True
        return resumable

    def _finish(self, name, key, result=None):
        self.timings[name] = time.monotonic() - self._start
        self._marker(name, 'done').write_text(json.dumps(
            {'key': key, 'seconds': self.timings[name], 'result': result}, indent=1))
        print(f'  done in {self.timings[name]:.0f} s', flush=True)

    def run(self, name, argv, description, outputs=(), resume_args=(), env=None, hint=None,
            key_extra=''):
        """Run ``argv`` unless done; stream its output with a prefix and into a log file.

        ``outputs`` are removed before a clean run; ``resume_args`` are appended when the
        step was interrupted before (same command, nothing upstream changed). ``key_extra``
        joins the command in the step's key (say, a digest of the preset file the command
        names, so an edited preset redoes the step). While the
        command is silent, a line every ``heartbeat`` seconds says it is alive, with
        ``hint()`` (e.g. the training step reached) when given.
        """
        argv = [str(a) for a in argv]
        key = shlex.join(argv) + (f' # {key_extra}' if key_extra else '')
        self._announce(name, description)
        if self.done(name, key):
            print(f'  reused (done earlier; --fresh to redo): {key}', flush=True)
            self._reuse(name)
            return
        if self._prepare(name, key, outputs) and resume_args:
            argv = argv + [str(a) for a in resume_args]
        print(f'  $ {shlex.join(argv)}', flush=True)
        log = self.marks / f'{name}.log'
        self._start = time.monotonic()
        with open(log, 'w', encoding='utf-8') as fh:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**self.env, **(env or {})}, text=True, bufsize=1)
            last = [time.monotonic()]

            def pump():
                for line in proc.stdout:
                    fh.write(line)
                    sys.stdout.write('  | ' + line)
                    sys.stdout.flush()
                    last[0] = time.monotonic()

            reader = threading.Thread(target=pump, name=f'{name}_output', daemon=True)
            reader.start()
            try:
                rc = self._wait(name, proc, last, hint)
            except BaseException:
                proc.terminate()
                proc.wait(timeout=60)
                raise
            reader.join(timeout=10)
        if rc != 0:
            raise StepFailed(f'step {name!r} failed with exit code {rc}; log: {log}')
        self._finish(name, key)

    def _wait(self, name, proc, last, hint):
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if now - last[0] >= self.heartbeat:
                    extra = hint() if hint else ''
                    print(f'  ... {name} running for {now - self._start:.0f} s'
                          + (f': {extra}' if extra else ''), flush=True)
                    last[0] = now

    def step(self, name, key, description, fn, outputs=()):
        """Run the in-process step ``fn()`` unless done; its JSON-able result is kept.

        A reused step returns the result recorded when it ran.
        """
        self._announce(name, description)
        if self.done(name, key):
            print('  reused (done earlier; --fresh to redo)', flush=True)
            return self._reuse(name).get('result')
        self._prepare(name, key, outputs)
        self._start = time.monotonic()
        result = fn()
        self._finish(name, key, result)
        return result

    def elapsed(self):
        """Return seconds since the pipeline started."""
        return time.monotonic() - self.t0

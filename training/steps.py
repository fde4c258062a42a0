"""Re-runnable pipeline steps: each records what it ran, and is skipped when done.

A step is done when its ``.done.json`` marker exists with the same command line; changing
the arguments, or ``--fresh``, runs it again. Markers are written only after success, so a
killed main job resumes at the step it was in.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path


class StepFailed(RuntimeError):
    """A pipeline step exited non-zero; the message names the step and its log."""


class Pipeline:
    """Run numbered steps with progress lines, timings and a log file per step."""

    def __init__(self, workdir, fresh=False, total=None, env=None):
        self.workdir = Path(workdir)
        self.marks = self.workdir / 'steps'
        self.marks.mkdir(parents=True, exist_ok=True)
        self.fresh = fresh
        self.total = total
        self.index = 0
        self.timings = {}
        self.env = {**os.environ, **(env or {})}

    def _marker(self, name):
        return self.marks / f'{name}.done.json'

    def _announce(self, name, text):
        self.index += 1
        total = f'/{self.total}' if self.total else ''
        print(f'\n[main_job {self.index}{total}] {name}: {text}', flush=True)

    def done(self, name, key):
        marker = self._marker(name)
        if self.fresh or not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text()).get('key') == key
        except ValueError:
            return False

    def run(self, name, argv, description, env=None):
        """Run ``argv`` (a python -m ... list) unless already done; stream its output."""
        key = shlex.join(argv)
        self._announce(name, description)
        if self.done(name, key):
            print(f'  reused (done earlier; --fresh to redo): {key}', flush=True)
            self.timings[name] = 0.0
            return
        print(f'  $ {key}', flush=True)
        log = self.marks / f'{name}.log'
        t0 = time.monotonic()
        with open(log, 'w', encoding='utf-8') as fh:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**self.env, **(env or {})}, text=True, bufsize=1)
            for line in proc.stdout:
                fh.write(line)
                sys.stdout.write('  | ' + line)
                sys.stdout.flush()
            rc = proc.wait()
        self.timings[name] = time.monotonic() - t0
        if rc != 0:
            raise StepFailed(f'step {name!r} failed with exit code {rc}; log: {log}')
        self._marker(name).write_text(json.dumps({'key': key, 'seconds': self.timings[name]}))
        print(f'  done in {self.timings[name]:.0f} s', flush=True)

    def call(self, name, description, fn):
        """Run an in-process step (always; used for the parts that must be fresh)."""
        self._announce(name, description)
        t0 = time.monotonic()
        result = fn()
        self.timings[name] = time.monotonic() - t0
        print(f'  done in {self.timings[name]:.0f} s', flush=True)
        return result

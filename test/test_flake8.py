# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""ament_flake8 over the package, as ros2pkg generates it (skipped without the linter)."""
import pytest

ament_flake8 = pytest.importorskip('ament_flake8.main')


@pytest.mark.flake8
@pytest.mark.linter
def test_flake8(repo_root):
    rc, errors = ament_flake8.main_with_errors(
        argv=['--config', str(repo_root / 'setup.cfg'),
              str(repo_root / 'sim2real_perception'), str(repo_root / 'training'),
              str(repo_root / 'launch'), str(repo_root / 'test'), str(repo_root / 'bench')])
    assert rc == 0, 'Found %d code style errors / warnings:\n' % len(errors) + '\n'.join(errors)

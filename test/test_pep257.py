# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""ament_pep257 over the package, as ros2pkg generates it (skipped without the linter)."""
import pytest

ament_pep257 = pytest.importorskip('ament_pep257.main')


@pytest.mark.linter
@pytest.mark.pep257
def test_pep257(repo_root):
    # ament convention; D213 also ignored: summaries start on the docstring's first line.
    rc = ament_pep257.main(argv=['--add-ignore', 'D213', '--',
                                 *(str(repo_root / d) for d in
                                   ('sim2real_perception', 'training', 'launch', 'test'))])
    assert rc == 0, 'Found code style errors / warnings'

# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""ament_copyright, as ros2pkg generates it (ament_copyright has no PyPI wheel: skipped here)."""
import pytest

ament_copyright = pytest.importorskip('ament_copyright.main')


@pytest.mark.copyright
@pytest.mark.linter
@pytest.mark.skip(reason='sources carry no per-file copyright headers; see LICENSE')
def test_copyright(repo_root):
    rc = ament_copyright.main(argv=[str(repo_root), 'test'])
    assert rc == 0, 'Found errors'

# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""Everything a user can set is documented, and the docs link to places that exist.

The option lists come from the real argparse parsers (each tool's ``build_parser()``), the
node parameters from ``config/depth_seg.yaml`` and ``NodeParams``, the launch arguments
from the launch file: a new option fails this test until README.md or docs/*.md names it.
"""
import argparse
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
README = REPO / 'README.md'
DOCS = REPO / 'docs'
PAGES = ('node.md', 'training.md', 'data.md', 'evaluation.md', 'benchmarks.md',
         'development.md')
README_MAX_LINES = 200

#: Every command-line module and the docs page that documents it (its --help names it).
CLI_MODULES = {
    'training.train': 'docs/training.md',
    'training.evaluate': 'docs/evaluation.md',
    'training.compare': 'docs/evaluation.md',
    'training.replay': 'docs/evaluation.md',
    'training.make_bag': 'docs/evaluation.md',
    'training.main_job': 'docs/evaluation.md',
    'training.data.make_procedural': 'docs/data.md',
    'training.data.preview': 'docs/data.md',
    'sim2real_perception.onnx_export': 'docs/node.md',
    'sim2real_perception.model.complexity': 'docs/benchmarks.md',
}
#: Benchmark scripts are found by themselves; each needs a build_parser().
BENCH_SCRIPTS = sorted((REPO / 'bench').glob('*.py'))
BENCH_PAGE = 'docs/benchmarks.md'


def _md_files():
    return [README] + sorted(DOCS.glob('*.md'))


def _text(paths):
    return '\n'.join(p.read_text(encoding='utf-8') for p in paths)


def _mentions(text, word):
    """Whether ``word`` occurs as a whole token (not inside a longer option or name)."""
    return re.search(r'(?<![\w-])' + re.escape(word) + r'(?![\w-])', text) is not None


def _options(parser):
    """Every long option of a parser (and of its subcommands), without --help."""
    found = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith('--') and o != '--help')
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _options(sub)
    return found


def _load_script(path):
    spec = importlib.util.spec_from_file_location(f'_docs_{path.stem}', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parsers():
    return ([pytest.param(name, page, id=name) for name, page in CLI_MODULES.items()]
            + [pytest.param(f'bench/{p.name}', BENCH_PAGE, id=f'bench/{p.name}')
               for p in BENCH_SCRIPTS])


def _build(name):
    module = (_load_script(REPO / name) if name.startswith('bench/')
              else importlib.import_module(name))
    assert hasattr(module, 'build_parser'), (
        f'{name} has no build_parser(): give it one so test_docs.py can read its options')
    return module.build_parser()


def test_pages_exist_and_readme_is_short():
    missing = [p for p in PAGES if not (DOCS / p).is_file()]
    assert not missing, f'docs pages missing: {missing}'
    lines = README.read_text(encoding='utf-8').count('\n')
    assert lines <= README_MAX_LINES, (
        f'README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/')


@pytest.mark.parametrize('name,page', _parsers())
def test_cli_options_documented(name, page):
    parser = _build(name)
    help_text = parser.format_help()
    assert page in help_text, f'{name} --help should point to {page}'
    # The tool's own page, or the README, must name every option.
    text = _text([README, REPO / page])
    undocumented = sorted(o for o in _options(parser) if not _mentions(text, o))
    assert not undocumented, f'{name}: options not in README.md or {page}: {undocumented}'


def test_node_parameters_documented():
    from sim2real_perception import node_params
    config = yaml.safe_load((REPO / 'config' / 'depth_seg.yaml').read_text(encoding='utf-8'))
    names = set(config['/**']['ros__parameters'])
    names |= {f.name for f in dataclasses.fields(node_params.NodeParams)}
    names |= set(node_params.DESCRIPTIONS) | {'class_names', 'class_colors'}
    text = _text([README, DOCS / 'node.md'])
    # In code format (`name`) or as a command-line setting (name:=...), not as a prose word.
    undocumented = sorted(n for n in names if f'`{n}`' not in text and f'{n}:=' not in text)
    assert not undocumented, f'node parameters not in README.md or docs/node.md: {undocumented}'


def test_launch_arguments_documented():
    launch = _load_script(REPO / 'launch' / 'depth_seg.launch.py')
    text = _text([README, DOCS / 'node.md'])
    undocumented = sorted(n for n in launch.ARGUMENTS
                          if f'`{n}`' not in text and f'{n}:=' not in text)
    assert not undocumented, f'launch arguments not in docs/node.md: {undocumented}'


def _slug(heading):
    """Return the anchor GitHub gives a heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _anchors(path):
    anchors, fenced = set(), False
    for line in path.read_text(encoding='utf-8').splitlines():
        if line.startswith('```'):
            fenced = not fenced
        elif not fenced and line.startswith('#'):
            anchors.add(_slug(line.lstrip('#')))
    return anchors


@pytest.mark.parametrize('path', _md_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(path):
    text = re.sub(r'```.*?```', '', path.read_text(encoding='utf-8'), flags=re.S)
    broken = []
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target):
            continue
        file_part, _, anchor = target.partition('#')
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == '.md' and anchor not in _anchors(dest):
            broken.append(target)
    assert not broken, f'{path.name}: broken links {broken}'

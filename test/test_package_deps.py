"""package.xml lists what the code imports, and the node docs' examples remap like the launch file.

Every import in ``sim2real_perception/`` and ``launch/`` (module level or inside functions)
is the standard library, the package itself, a ``package.xml`` dependency (ROS package
names, rosdep keys for numpy / OpenCV / PyYAML), or on the pip-only list that
docs/node.md documents (rosdep cannot provide those).
"""
import ast
import importlib.util
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: Python import name -> rosdep key, where they differ.
ROSDEP_KEYS = {'cv2': 'python3-opencv', 'numpy': 'python3-numpy', 'yaml': 'python3-yaml'}


def imports(paths):
    """Return {top-level module: sorted files importing it} for absolute imports."""
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                found.setdefault(name.split('.')[0], set()).add(str(path.relative_to(REPO)))
    return {k: sorted(v) for k, v in found.items()}


def package_xml_depends():
    root = ET.parse(REPO / 'package.xml').getroot()
    tags = ('depend', 'exec_depend', 'build_depend', 'build_export_depend')
    return {e.text.strip() for tag in tags for e in root.iter(tag)}


def pip_only_list():
    """Return the backticked names of docs/node.md's "Pip-only dependencies" sentence."""
    paragraphs = [p for p in (REPO / 'docs' / 'node.md').read_text().split('\n\n')
                  if p.startswith('Pip-only dependencies')]
    assert len(paragraphs) == 1, 'docs/node.md must have one "Pip-only dependencies" paragraph'
    sentence = paragraphs[0].split(': ', 1)[1].split('.', 1)[0]
    return set(re.findall(r'`([\w.-]+)`', sentence))


def test_every_import_is_a_declared_dependency():
    sources = sorted((REPO / 'sim2real_perception').rglob('*.py')) + \
        sorted((REPO / 'launch').glob('*.py'))
    found = imports(sources)
    assert {'rclpy', 'rcl_interfaces', 'ament_index_python', 'launch', 'launch_ros',
            'torch', 'onnxruntime'} <= set(found)  # the scan sees function-level imports
    depends, pip_only = package_xml_depends(), pip_only_list()
    assert pip_only >= {'torch', 'onnxruntime', 'safetensors'}
    missing = {}
    for module, files in found.items():
        if module in sys.stdlib_module_names or module == 'sim2real_perception':
            continue
        if ROSDEP_KEYS.get(module, module) not in depends and module not in pip_only:
            missing[module] = files
    assert not missing, f'imported but neither in package.xml nor pip-only: {missing}'


def test_launch_file_needs_ros2launch():
    assert {'launch', 'launch_ros', 'ros2launch'} <= package_xml_depends()


def test_setup_py_has_no_options_setuptools_does_not_know():
    # setuptools >= 72 prints "Unknown distribution option: 'tests_require'" (stderr in colcon).
    assert 'tests_require' not in (REPO / 'setup.py').read_text()


def _doc_commands():
    """Shell commands in README.md and docs/*.md code blocks (continuations joined)."""
    commands = []
    for path in [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md')):
        for block in re.findall(r'```(?:bash|sh|console)?\n(.*?)```', path.read_text(),
                                re.S):
            text = re.sub(r'\\\n#?', ' ', block)
            for line in text.splitlines():
                line = re.sub(r'^\s*#\s*(or:)?', '', line).strip()
                if 'depth_seg_node' in line and '--ros-args' in line:
                    commands.append((path.name, line))
    return commands


def test_documented_node_commands_remap_camera_info_next_to_the_image():
    spec = importlib.util.spec_from_file_location('depth_seg_launch',
                                                  REPO / 'launch' / 'depth_seg.launch.py')
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    commands = _doc_commands()
    assert any('ros2 run' in cmd for _, cmd in commands)
    for page, cmd in commands:
        image = re.search(r'-r image:=(\S+)', cmd)
        if image:
            want = f'-r camera_info:={launch.camera_info_topic(image.group(1))}'
            assert want in cmd, f'{page}: {cmd!r} does not remap camera_info ({want})'

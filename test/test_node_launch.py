"""launch/depth_seg.launch.py: compiles, documents its console-script twin, builds where it can.

ROS 2 ``launch`` cannot be installed here; the description itself is only built where
``launch`` and ``launch_ros`` import. The command line the process tests run comes from the
same ``node_command`` helper, and the docstring's example is checked against it.
"""
import importlib.util
import py_compile
import re
import types

import pytest

from sim2real_perception import dds

LAUNCH_FILE = 'launch/depth_seg.launch.py'


@pytest.fixture(scope='module')
def launch_module(repo_root):
    spec = importlib.util.spec_from_file_location('depth_seg_launch', repo_root / LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_compiles_and_is_installed(repo_root, tmp_path):
    py_compile.compile(str(repo_root / LAUNCH_FILE), cfile=str(tmp_path / 'x.pyc'),
                       doraise=True)
    setup = (repo_root / 'setup.py').read_text()
    assert "glob('launch/*.launch.py')" in setup and "glob('config/*.yaml')" in setup


def test_launch_arguments_are_the_documented_ones(launch_module):
    assert list(launch_module.ARGUMENTS) == ['model_path', 'image_topic', 'backend', 'device',
                                             'params_file', 'namespace']
    for name, (default, description) in launch_module.ARGUMENTS.items():
        assert isinstance(default, str) and description, name


def test_node_command_matches_the_docstring_example(launch_module):
    doc = launch_module.__doc__
    block = doc.split('(and that the\ntests run)::', 1)[1].split('\n\n', 2)[1]
    documented = re.sub(r'\\\n', ' ', block).split()
    command = launch_module.node_command(
        '<share>/sim2real_perception/config/depth_seg.yaml', '/path/to/model',
        image_topic='/camera/image_raw', backend='onnxruntime', device='cpu',
        namespace='front')
    assert documented == command


def test_empty_arguments_keep_the_params_file_values(launch_module):
    cmd = launch_module.node_command('p.yaml', '/m')
    assert cmd == ['depth_seg_node', '--ros-args', '-r', '__node:=depth_seg_node',
                   '--params-file', 'p.yaml', '-p', 'model_path:=/m']
    assert launch_module.parameter_overrides('', '', '') == {}


@pytest.mark.parametrize('image, info', [('/camera/image_raw', '/camera/camera_info'),
                                         ('/front/left/image_rect', '/front/left/camera_info'),
                                         ('cam/image', 'cam/camera_info'),
                                         ('/image', '/camera_info')])
def test_camera_info_is_taken_from_next_to_the_image(launch_module, image, info):
    assert launch_module.camera_info_topic(image) == info
    assert ('camera_info', info) in launch_module.remappings(image)
    assert ('image/compressed', image + '/compressed') in launch_module.remappings(image)


def test_profile_is_set_unless_the_user_chose_one(launch_module, repo_root):
    profile = repo_root / 'config' / dds.PROFILE_FILE
    assert profile.is_file()
    assert launch_module.profile_environment({}, profile) == {dds.ENV_VAR: str(profile)}
    assert launch_module.profile_environment({dds.ENV_VAR: '/mine.xml'}, profile) == {}
    assert launch_module.profile_environment({dds.LEGACY_ENV_VAR: '/old.xml'}, profile) == {}
    # The console script follows the same rule.
    env = {}
    assert 'applied' in dds.apply_default_profile(env) and env[dds.ENV_VAR] == str(profile)
    env = {dds.ENV_VAR: '/mine.xml'}
    assert 'set in the environment, kept' in dds.apply_default_profile(env)
    assert env == {dds.ENV_VAR: '/mine.xml'}


def test_the_profile_the_launch_file_sets_is_not_logged_as_a_user_setting(
        launch_module, repo_root, tmp_path):
    # Under launch the node finds the variable already set, by the launch file itself.
    shipped = repo_root / 'config' / dds.PROFILE_FILE
    installed = tmp_path / 'share' / 'sim2real_perception' / 'config' / dds.PROFILE_FILE
    installed.parent.mkdir(parents=True)
    installed.write_bytes(shipped.read_bytes())  # the install space's copy
    for profile in (shipped, installed):
        env = launch_module.profile_environment({}, profile)
        note = dds.apply_default_profile(env)
        assert 'user' not in note and 'shipped large shared-memory profile' in note, note
        assert str(profile) in note
    mine = tmp_path / 'mine.xml'
    mine.write_text('<profiles/>')
    note = dds.apply_default_profile({dds.ENV_VAR: str(mine)})
    assert 'not the shipped' in note and str(mine) in note


def test_a_params_file_that_is_not_a_file_stops_the_launch_naming_it(launch_module,
                                                                     tmp_path):
    missing = tmp_path / 'nonexistent.yaml'
    context = types.SimpleNamespace(launch_configurations={'params_file': str(missing)})
    with pytest.raises(FileNotFoundError, match=f'params file not found: {missing}'):
        launch_module._launch_setup(context)  # before anything needs ROS 2 launch
    present = tmp_path / 'p.yaml'
    present.write_text('{}')
    assert launch_module.check_params_file(str(present)) == str(present)


def test_node_output_has_colour_codes_only_on_a_terminal(launch_module, repo_root):
    redirected = launch_module.output_options(False)
    assert redirected['emulate_tty'] is False
    assert redirected['additional_env']['RCUTILS_COLORIZED_OUTPUT'] == '0'
    assert redirected['additional_env']['PYTHONUNBUFFERED'] == '1'  # still line by line
    terminal = launch_module.output_options(True)
    assert terminal['emulate_tty'] is True
    assert 'RCUTILS_COLORIZED_OUTPUT' not in terminal['additional_env']
    text = (repo_root / LAUNCH_FILE).read_text()
    assert 'emulate_tty=True' not in text and 'output_options(sys.stdout.isatty())' in text


def test_description_builds_where_ros2_launch_is_installed(launch_module):
    pytest.importorskip('launch_ros', reason='ROS 2 launch_ros is not installed here')
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    description = launch_module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    declared = [e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)]
    assert declared == list(launch_module.ARGUMENTS)

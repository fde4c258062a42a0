"""Launch depth_seg_node with the package's parameter file and Fast DDS profile.

    ros2 launch sim2real_perception depth_seg.launch.py model_path:=/path/to/model \
        image_topic:=/camera/image_raw [backend:=onnxruntime] [device:=cpu] \
        [params_file:=my.yaml] [namespace:=front]

is the same as the console-script command that :func:`node_command` returns (and that the
tests run)::

    depth_seg_node --ros-args -r __node:=depth_seg_node -r __ns:=/front \
        --params-file <share>/sim2real_perception/config/depth_seg.yaml \
        -p model_path:=/path/to/model -p backend:=onnxruntime -p device:=cpu \
        -r image:=/camera/image_raw -r image/compressed:=/camera/image_raw/compressed \
        -r camera_info:=/camera/camera_info

``backend`` and ``device`` left empty keep the params file's values. ``camera_info`` is
taken from next to the image topic, as image_transport's camera publishers place it.
FASTDDS_DEFAULT_PROFILES_FILE is set to the shipped large shared-memory profile unless the
user set it (or its legacy FASTRTPS_ name). A ``params_file`` that is not a file stops the
launch with an error naming it (launch_ros alone only warns and starts the node on its
built-in defaults). The node's output gets a terminal (colours) only when this launch's own
output is one, so a redirected log carries no ANSI colour codes. The ``launch`` imports sit
inside the functions so the pure helpers can be tested where ROS 2 ``launch`` is not
installed.
"""
import os
import posixpath
import sys

PACKAGE = 'sim2real_perception'
EXECUTABLE = 'depth_seg_node'
PROFILE_VAR = 'FASTDDS_DEFAULT_PROFILES_FILE'
LEGACY_PROFILE_VAR = 'FASTRTPS_DEFAULT_PROFILES_FILE'

#: name -> (default, description) of every launch argument.
ARGUMENTS = {
    'model_path': ('', 'exported model directory (config.json + model.safetensors '
                       '[+ model.onnx]) or a .onnx file next to its config.json'),
    'image_topic': ('image', 'input sensor_msgs/Image topic, e.g. /camera/image_raw'),
    'backend': ('', 'auto | torch | onnxruntime; empty keeps the params file value'),
    'device': ('', 'auto | cpu | cuda | cuda:N; empty keeps the params file value'),
    'params_file': ('', 'node parameter YAML; empty = the installed '
                        'share/sim2real_perception/config/depth_seg.yaml'),
    'namespace': ('', 'namespace for the node and its topics'),
}


def camera_info_topic(image_topic):
    """Return the camera_info topic that sits next to an image topic (image_transport rule)."""
    parent = posixpath.dirname(image_topic.rstrip('/'))
    return posixpath.join(parent, 'camera_info') if parent else 'camera_info'


def remappings(image_topic):
    """Topic remappings for an input image topic: the image, its compressed twin, camera_info."""
    if not image_topic or image_topic == 'image':
        return []
    return [('image', image_topic), ('image/compressed', image_topic + '/compressed'),
            ('camera_info', camera_info_topic(image_topic))]


def parameter_overrides(model_path, backend='', device=''):
    """Parameters the launch arguments set on top of the params file (empty ones are left out)."""
    values = {'model_path': model_path, 'backend': backend, 'device': device}
    return {k: v for k, v in values.items() if v}


def node_command(params_file, model_path, image_topic='image', backend='', device='',
                 namespace='', executable=EXECUTABLE):
    """Return the console-script command line equivalent to this launch file's node."""
    cmd = [executable, '--ros-args', '-r', f'__node:={EXECUTABLE}']
    if namespace:
        cmd += ['-r', f'__ns:=/{namespace.strip("/")}']
    cmd += ['--params-file', str(params_file)]
    for name, value in parameter_overrides(model_path, backend, device).items():
        cmd += ['-p', f'{name}:={value}']
    for src, dst in remappings(image_topic):
        cmd += ['-r', f'{src}:={dst}']
    return cmd


def check_params_file(path):
    """Raise FileNotFoundError naming ``path`` unless it is a file (launch shows the text)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'params file not found: {path} (launch argument params_file)')
    return path


def output_options(isatty):
    """Node process output settings: a pseudo-terminal (colours) only for a terminal."""
    env = {'PYTHONUNBUFFERED': '1'}  # without a terminal, Python would buffer its output
    if not isatty:
        env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    return {'output': 'screen', 'emulate_tty': bool(isatty), 'additional_env': env}


def profile_environment(environ, profile):
    """Return {var: value} to set so Fast DDS uses ``profile``; empty if the user chose one."""
    if environ.get(PROFILE_VAR) or environ.get(LEGACY_PROFILE_VAR) or not profile:
        return {}
    return {PROFILE_VAR: str(profile)}


def _launch_setup(context):
    """Resolve the launch arguments and return the actions (runs at launch time)."""
    def arg(name):
        return context.launch_configurations.get(name, ARGUMENTS[name][0])

    if arg('params_file'):
        check_params_file(arg('params_file'))
    from ament_index_python.packages import get_package_share_directory
    from launch.actions import SetEnvironmentVariable
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    share = get_package_share_directory(PACKAGE)
    params_file = check_params_file(
        arg('params_file') or os.path.join(share, 'config', 'depth_seg.yaml'))
    profile = os.path.join(share, 'config', 'fastdds_large_shm.xml')
    environ = dict(os.environ) | dict(getattr(context, 'environment', {}))
    actions = [SetEnvironmentVariable(k, v)
               for k, v in profile_environment(environ, profile).items()]
    overrides = {k: ParameterValue(v, value_type=str)
                 for k, v in parameter_overrides(arg('model_path'), arg('backend'),
                                                 arg('device')).items()}
    actions.append(Node(
        package=PACKAGE, executable=EXECUTABLE, name=EXECUTABLE,
        namespace=arg('namespace') or None, parameters=[params_file, overrides],
        remappings=remappings(arg('image_topic')), **output_options(sys.stdout.isatty())))
    return actions


def generate_launch_description():
    """Declare the launch arguments and start depth_seg_node."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, (default, text) in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_setup)])

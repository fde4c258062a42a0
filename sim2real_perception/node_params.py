"""The node's parameters: one table of names, defaults, checks and descriptions.

``config/depth_seg.yaml`` lists the same parameters with the same defaults; everything is
validated at start-up so a typo stops the node with a message naming the parameter instead
of surfacing as silence on a topic an hour later.
"""
import difflib
from dataclasses import dataclass, fields

BACKENDS = ('auto', 'torch', 'onnxruntime')
PRECISIONS = ('fp32', 'fp16', 'bf16')
RELIABILITY = ('best_effort', 'reliable')
#: ground_contact values -> Predictor's ground_contact (None: as the export says).
GROUND_CONTACT = {'model': None, 'true': True, 'false': False}


class ParameterError(ValueError):
    """A parameter value the node cannot run with; the text names the parameter."""


@dataclass
class NodeParams:
    """Validated parameter values (see ``config/depth_seg.yaml`` for the documentation)."""

    model_path: str = ''
    backend: str = 'auto'
    device: str = 'auto'
    precision: str = 'fp32'
    threads: int = 0
    sky_as_infinity: bool = True
    ground_contact: str = 'model'
    input_reliability: str = 'best_effort'
    input_depth: int = 1
    subscribe_compressed: bool = False
    max_queued_frames: int = 1
    max_input_pixels: int = 16777216
    pipeline: bool = True
    publish_depth: bool = True
    publish_segmentation: bool = True
    publish_segmentation_color: bool = True
    publish_camera_info: bool = True
    output_reliability: str = 'reliable'
    output_depth: int = 1
    diagnostics_period: float = 1.0
    log_period: float = 10.0
    warn_throttle_period: float = 5.0
    hardware_id: str = ''


DESCRIPTIONS = {
    'model_path': 'exported model directory (config.json + model.safetensors [+ model.onnx]) '
                  'or a .onnx file next to its config.json',
    'backend': 'inference backend: auto (onnxruntime when model.onnx exists), torch, '
               'onnxruntime',
    'device': 'auto, cpu, cuda or cuda:N',
    'precision': 'fp32; fp16/bf16 on CUDA (torch), fp16 with the TensorRT provider',
    'threads': 'CPU inference threads; 0 = $SIM2REAL_THREADS if set, else library default',
    'sky_as_infinity': 'publish +inf depth where the model sees sky (REP 117 out of range)',
    'ground_contact': 'depth of upright surfaces (cars, poles, walls) from the ground depth '
                      'at their foot: model (as the export\'s model.ground_contact says), '
                      'true or false',
    'input_reliability': 'image subscription reliability: best_effort (sensor data, hears '
                         'every publisher) or reliable',
    'input_depth': 'image subscription history depth (keep last N)',
    'subscribe_compressed': 'also subscribe image/compressed (sensor_msgs/CompressedImage)',
    'max_queued_frames': 'frames waiting for the model; 1 = only ever the newest frame, '
                         'older ones are dropped and counted',
    'max_input_pixels': 'larger images are rejected as malformed',
    'pipeline': 'upsample and publish each frame in a second thread while the model already '
                'runs the next one (more frames/s); false: one thread does every stage',
    'publish_depth': 'publish depth (32FC1 metres)',
    'publish_segmentation': 'publish segmentation (mono8 class ids)',
    'publish_segmentation_color': 'publish segmentation_color (rgb8; only with subscribers)',
    'publish_camera_info': 'republish camera_info (input) on depth/camera_info with each '
                           'output header, scaled to the output size',
    'output_reliability': 'output publisher reliability: reliable or best_effort',
    'output_depth': 'output publisher history depth (keep last N)',
    'diagnostics_period': 'seconds between /diagnostics messages (> 0)',
    'log_period': 'seconds between health log lines; 0 disables them',
    'warn_throttle_period': 'seconds between repeated warnings about bad frames',
    'hardware_id': 'diagnostics hardware_id; empty = the model path',
}

_CHOICES = {'backend': BACKENDS, 'precision': PRECISIONS, 'input_reliability': RELIABILITY,
            'output_reliability': RELIABILITY, 'ground_contact': tuple(GROUND_CONTACT)}
_MIN = {'threads': 0, 'input_depth': 1, 'max_queued_frames': 1, 'max_input_pixels': 1,
        'output_depth': 1, 'diagnostics_period': 1e-3, 'log_period': 0.0,
        'warn_throttle_period': 0.0}


#: Parameters every node may carry (rclpy's own, QoS overrides) or that we declare later.
_ALSO_ALLOWED = ('use_sim_time', 'start_type_description_service', 'class_names',
                 'class_colors')


def check_unknown(names):
    """Raise ParameterError for parameter names this node does not have (typos)."""
    known = set(defaults()) | set(_ALSO_ALLOWED)
    unknown = sorted(n for n in names if n not in known and not n.startswith('qos_overrides.'))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(defaults()), n=1)
            hints.append(f'{name!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
        raise ParameterError(f'unknown parameter(s): {", ".join(hints)}; the parameters are '
                             f'listed in config/depth_seg.yaml')


def defaults():
    """Return {name: default} in declaration order."""
    return {f.name: f.default for f in fields(NodeParams)}


def validate(values):
    """Check raw values ({name: value}) and return NodeParams; raise ParameterError."""
    out = {}
    for f in fields(NodeParams):
        value = values.get(f.name, f.default)
        want = type(f.default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise ParameterError(f'parameter {f.name!r} must be a {want.__name__}, got '
                                 f'{value!r} ({type(value).__name__})')
        if f.name in _CHOICES and value not in _CHOICES[f.name]:
            raise ParameterError(f'parameter {f.name!r} must be one of '
                                 f'{list(_CHOICES[f.name])}, got {value!r}')
        if f.name in _MIN and value < _MIN[f.name]:
            raise ParameterError(f'parameter {f.name!r} must be >= {_MIN[f.name]}, got {value!r}')
        out[f.name] = value
    device = out['device']
    if device not in ('auto', 'cpu', 'cuda') and not (
            device.startswith('cuda:') and device[5:].isdigit()):
        raise ParameterError(f"parameter 'device' must be auto, cpu, cuda or cuda:N, "
                             f'got {device!r}')
    if not out['model_path']:
        raise ParameterError("parameter 'model_path' is not set: pass "
                             "-p model_path:=/path/to/exported_model (a directory with "
                             "config.json) or set it in the params file")
    if not any(out[k] for k in ('publish_depth', 'publish_segmentation',
                                'publish_segmentation_color')):
        raise ParameterError('parameters publish_depth, publish_segmentation and '
                             'publish_segmentation_color are all false: nothing to publish')
    return NodeParams(**out)

"""Run an exported model on camera images of any size: the inference library.

``Predictor.from_path`` loads an exported directory (``config.json`` + ``model.safetensors``,
optionally ``model.onnx``) or a ``.onnx`` file next to a ``config.json``, with PyTorch or
ONNX Runtime. Neither path unpickles anything: safetensors and ONNX protobuf hold data only.

An image is shrunk to the model size by box averaging (:func:`resize_to_model`, close to
``cv2.INTER_AREA`` at a fifth of its cost); depth comes back to the input resolution
bilinearly and labels by nearest neighbour, so labels are always real class ids.
Depth is metric (the network decodes metres in its graph); pixels the network calls sky are
``+inf`` when ``sky_as_infinity`` (REP 117 "no return"), and NaN only ever means the model
produced NaN (REP 117 "invalid"). No depth is ever clamped or set to 0. With the export's
``model.ground_contact`` (or ``ground_contact=True``) upright surfaces take the ground's depth
at their foot, at the model size before the upsampling (:mod:`.ground_contact`).

The ONNX Runtime path imports no torch (nor safetensors): a robot that runs
``backend: onnxruntime`` needs only numpy, OpenCV, onnxruntime and the ROS packages.
Model files are read through :func:`sim2real_perception.model_io.read_consistent`, so a
directory rewritten during start-up gives one export's model or a clear error.
"""
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from . import labels as label_set
from .ground_contact import ground_contact_depth
from .model_config import ground_class_ids
from .model_io import (check_onnx_metadata, CONFIG_NAME, ModelLoadError, ONNX_NAME,
                       read_consistent, read_model_config, WEIGHTS_NAME)

LOG = logging.getLogger(__name__)

BACKENDS = ('auto', 'torch', 'onnxruntime')
DEVICES = ('auto', 'cpu', 'cuda')
PRECISIONS = ('fp32', 'fp16', 'bf16')
SKY_CLASS = label_set.CLASS_NAMES.index('sky')
#: Environment variable giving the CPU inference threads when the caller gives none
#: (ONNX Runtime does not read OMP_NUM_THREADS; its default is one thread per core).
THREADS_ENV = 'SIM2REAL_THREADS'


def default_threads(threads=None):
    """Return ``threads``, else ``$SIM2REAL_THREADS`` as an int, else None (library default)."""
    if threads:
        return int(threads)
    value = os.environ.get(THREADS_ENV, '').strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f'{THREADS_ENV}={value!r}: must be a positive integer')
    return n


class InputImageError(ValueError):
    """An image the predictor cannot take (wrong dtype, shape or size)."""


def _ms(t0):
    return (time.perf_counter() - t0) * 1000.0


def resize_to_model(rgb, width, height):
    """Resize an image to ``width`` x ``height``, box-averaging when it shrinks.

    ``cv2.INTER_AREA`` takes a slow general path for non-integer factors (1.4 ms for
    1242x375 -> 256x128 on one core here). Bilinear to twice the model size, then a 2x2 box
    (INTER_AREA's integer fast path) takes 0.3 ms. On the procedural KITTI frames it is
    0.23 grey levels from INTER_AREA on average (0.17 with a full integer box, at 3x the
    cost); on near-Nyquist texture the bilinear step aliases a little (``test_predictor``
    bounds both).
    """
    h, w = rgb.shape[:2]
    kx, ky = min(2, max(1, w // width)), min(2, max(1, h // height))
    if kx * ky == 1:
        return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
    if (w, h) != (width * kx, height * ky):
        rgb = cv2.resize(rgb, (width * kx, height * ky), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


@dataclass
class ModelOutput:
    """One image's model-size outputs and the input size (H, W) they go back to."""

    depth: np.ndarray
    labels: np.ndarray
    size: tuple
    timings: dict


@dataclass
class Prediction:
    """One image's outputs at the input resolution, plus per-stage timings in ms.

    ``nan_pixels`` counts model-size depth pixels that came out NaN (a broken model or
    weights); they stay NaN at full size, REP 117's "invalid".
    """

    depth: np.ndarray
    labels: np.ndarray
    timings: dict = field(default_factory=dict)
    nan_pixels: int = 0
    small_labels: np.ndarray = None
    _color: np.ndarray = None

    @property
    def color(self):
        """Return the labels coloured with the shared palette (rgb8), computed on first use."""
        if self._color is None:
            self._color = label_set.colorize(self.labels)
        return self._color


def resolve_model_path(model_path):
    """Return (model_dir, onnx_path or None) for an exported dir, config, weights or .onnx."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        onnx = path / ONNX_NAME
        return path, (onnx if onnx.is_file() else None)
    if path.suffix == '.onnx':
        if not path.is_file():
            raise ModelLoadError(f'ONNX model not found: {path}')
        if not (path.parent / CONFIG_NAME).is_file():
            raise ModelLoadError(f'{path} needs its {CONFIG_NAME} next to it '
                                 f'({path.parent / CONFIG_NAME} not found)')
        return path.parent, path
    if path.name in (CONFIG_NAME, WEIGHTS_NAME) and path.is_file():
        return resolve_model_path(path.parent)
    raise ModelLoadError(f'model path not found: {path} (an exported model directory or a '
                         f'.onnx file next to {CONFIG_NAME})')


def _ort_providers(device):
    """Pick ONNX Runtime execution providers for a device name ('auto', 'cpu', 'cuda')."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    if device == 'cpu':
        return ['CPUExecutionProvider']
    gpu = [p for p in ('TensorrtExecutionProvider', 'CUDAExecutionProvider') if p in available]
    if device.startswith('cuda') and not gpu:
        raise ValueError(f'device {device!r} requested but onnxruntime has no CUDA/TensorRT '
                         f'provider (available: {available}; install onnxruntime-gpu)')
    return gpu + ['CPUExecutionProvider']


class _TorchRunner:
    """DepthSegNet on CPU or CUDA; fp16/bf16 through autocast on CUDA only."""

    name = 'torch'

    def __init__(self, model_dir, device, precision):
        import torch
        from .model_io import load_depth_seg_net, torch_device
        self.torch = torch
        self.device = torch_device(device)
        if precision != 'fp32' and self.device.type != 'cuda':
            raise ValueError(f'precision {precision!r} needs a CUDA device '
                             f'(got {self.device}); use fp32 on CPU')
        self.dtype = {'fp16': torch.float16, 'bf16': torch.bfloat16}.get(precision)
        self.net, self.config = load_depth_seg_net(model_dir, self.device)
        self.description = f'torch {torch.__version__} on {self.device} ({precision})'

    def __call__(self, batch_u8):
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(batch_u8).to(self.device, non_blocking=True)
            if self.dtype is not None:
                with torch.autocast('cuda', dtype=self.dtype):
                    depth, labels = self.net(x)
            else:
                depth, labels = self.net(x)
            return depth.float().cpu().numpy(), labels.cpu().numpy()


class _OrtRunner:
    """An ONNX Runtime session over ``model.onnx`` (uint8 NHWC in, depth + labels out)."""

    name = 'onnxruntime'

    def __init__(self, model_dir, onnx_path, device, precision, threads=None):
        import onnxruntime as ort
        providers = _ort_providers(device)
        options = []
        for p in providers:
            opts = {}
            if p == 'TensorrtExecutionProvider' and precision == 'fp16':
                opts = {'trt_fp16_enable': True}
            options.append(opts)
        if precision != 'fp32' and providers[0] != 'TensorrtExecutionProvider':
            raise ValueError(f'precision {precision!r} with onnxruntime needs the TensorRT '
                             f'provider (fp16); use backend torch on CUDA for fp16/bf16')
        if precision == 'bf16':
            raise ValueError('precision bf16 is only supported with backend torch on CUDA')
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        # No busy-waiting between runs: spinning pool threads took the cores the next
        # frame's resize needed (preprocess 9-10 -> 2.1 ms, inference 73-85 -> 45 ms for
        # the cpu preset at 1242x375 on the shared 2-core machine; bench/bench_node.py).
        so.add_session_config_entry('session.intra_op.allow_spinning', '0')

        def load(config):
            # From the bytes read here, so the graph checked is the graph that runs
            # (a path only for a graph with external weight files next to it).
            data = Path(onnx_path).read_bytes() if onnx_path.is_file() else None
            try:
                try:
                    session = ort.InferenceSession(data, sess_options=so, providers=providers,
                                                   provider_options=options)
                except Exception:  # noqa: BLE001 - retried from the path below
                    session = ort.InferenceSession(str(onnx_path), sess_options=so,
                                                   providers=providers,
                                                   provider_options=options)
            except Exception as exc:  # noqa: BLE001 - ORT raises private exception types
                raise ModelLoadError(f'cannot load ONNX model {onnx_path}: '
                                     f'{str(exc).splitlines()[0] if str(exc) else exc}') \
                    from exc
            check_onnx_metadata(config, session.get_modelmeta().custom_metadata_map,
                                onnx_path)
            return session

        self.config, self.session = read_consistent(model_dir, load)
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = self.session.get_inputs()[0].shape
        used = self.session.get_providers()
        self.description = f'onnxruntime {ort.__version__} with {used[0]} ({precision})'

    def __call__(self, batch_u8):
        depth, labels = self.session.run(None, {self.input_name: batch_u8})
        return depth.astype(np.float32, copy=False), labels.astype(np.uint8, copy=False)


def _ort_importable():
    try:
        import onnxruntime  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def choose_backend(backend, device, onnx_path):
    """Resolve 'auto' to a backend; return ``(backend, why)``.

    ONNX Runtime when a model.onnx exists (fastest on CPU, and uses TensorRT/CUDA providers
    with onnxruntime-gpu), else PyTorch. Deciding never imports torch: with ``device``
    auto, ONNX Runtime runs on a GPU provider where it has one and on the CPU otherwise
    (``backend: torch`` for PyTorch's CUDA with a CPU-only onnxruntime).
    """
    if backend != 'auto':
        return backend, 'requested'
    if onnx_path is None:
        return 'torch', f'no {ONNX_NAME} in the model directory'
    if not _ort_importable():
        return 'torch', 'onnxruntime is not installed'
    if device.startswith('cuda'):
        import onnxruntime as ort
        if not {'TensorrtExecutionProvider', 'CUDAExecutionProvider'} & \
                set(ort.get_available_providers()):
            return 'torch', 'CUDA requested but onnxruntime has no GPU provider'
    return 'onnxruntime', f'{onnx_path.name} present'


class Predictor:
    """Depth (metres) + class ids for HxWx3 uint8 RGB images of any size."""

    def __init__(self, runner, config, sky_as_infinity=True, ground_contact=None):
        self.runner = runner
        self.config = config
        self.model_config = config['model_config']
        self.height, self.width = self.model_config.height, self.model_config.width
        self.class_names = list(config.get('labels', {}).get(
            'names', label_set.CLASS_NAMES[:self.model_config.num_classes]))
        #: class id -> rgb colour of segmentation_color (the shared palette).
        self.palette = label_set.PALETTE[:len(self.class_names)]
        self.sky_class = SKY_CLASS if 'sky' in self.class_names else None
        self.sky_as_infinity = bool(sky_as_infinity)
        #: Upright surfaces take the ground depth at their foot (ground_contact.py); None
        #: means as the export's ``model.ground_contact`` says.
        self.ground_contact = bool(self.model_config.ground_contact if ground_contact is None
                                   else ground_contact)
        self._ground = ground_class_ids(self.model_config.num_classes)
        self._inf = None  # +inf image of the last output size (sky marking)
        self.backend = runner.name
        self.description = runner.description

    @classmethod
    def from_path(cls, model_path, backend='auto', device='auto', precision='fp32',
                  sky_as_infinity=True, threads=None, ground_contact=None):
        """Load a model; raise ModelLoadError naming the file, ValueError for bad options.

        ``ground_contact`` (True / False) overrides the export's ``model.ground_contact``.
        """
        for name, value, allowed in (('backend', backend, BACKENDS),
                                     ('precision', precision, PRECISIONS)):
            if value not in allowed:
                raise ValueError(f'{name} must be one of {allowed}, got {value!r}')
        if not (device in DEVICES or str(device).startswith('cuda:')):
            raise ValueError(f"device must be one of {DEVICES} or 'cuda:N', got {device!r}")
        threads = default_threads(threads)
        model_dir, onnx_path = resolve_model_path(model_path)
        read_model_config(model_dir)  # a missing or broken config is named before anything
        chosen, why = choose_backend(backend, device, onnx_path)
        if chosen == 'onnxruntime':
            if onnx_path is None:
                raise ModelLoadError(
                    f'backend onnxruntime needs {model_dir / ONNX_NAME}; create it with '
                    f'python -m sim2real_perception.onnx_export --model {model_dir}')
            runner = _OrtRunner(model_dir, onnx_path, device, precision, threads)
            config = runner.config
            shape = runner.input_shape
            want = [config['model_config'].height, config['model_config'].width, 3]
            if len(shape) != 4 or list(shape[1:]) != want:
                raise ModelLoadError(f'{onnx_path} input shape {shape} does not match '
                                     f'{model_dir / CONFIG_NAME} (N x {want})')
        else:
            if threads:
                import torch
                torch.set_num_threads(int(threads))
            runner = _TorchRunner(model_dir, device, precision)
            config = runner.config
        LOG.info('model %s: %s (backend %s: %s)', model_path, runner.description, chosen, why)
        return cls(runner, config, sky_as_infinity, ground_contact)

    def preprocess(self, rgb):
        """Check an image and resize it to the model size (:func:`resize_to_model`)."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 \
                or rgb.shape[2] != 3:
            desc = f'{rgb.dtype} {rgb.shape}' if isinstance(rgb, np.ndarray) else type(rgb)
            raise InputImageError(f'expected an HxWx3 uint8 RGB image, got {desc}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise InputImageError(f'empty image {rgb.shape[1]}x{rgb.shape[0]}')
        if rgb.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(rgb)
        return resize_to_model(rgb, self.width, self.height)

    def postprocess(self, depth, labels, size):
        """Bring one model-size output back to ``size`` = (H, W); mark sky as +inf."""
        h, w = size
        if (h, w) != depth.shape:
            depth = cv2.resize(depth, (w, h), interpolation=cv2.INTER_LINEAR)
            full_labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        else:
            depth, full_labels = depth.copy(), labels
        if self.sky_as_infinity and self.sky_class is not None:
            # OpenCV's masked copy from a cached +inf image: 2.5x quicker than numpy's
            # boolean assignment at 1242x375.
            sky = cv2.compare(full_labels, self.sky_class, cv2.CMP_EQ)
            depth = cv2.copyTo(self._infinity(h, w), sky, depth)
        return depth, full_labels

    def _infinity(self, h, w):
        inf = self._inf  # one read: another thread may swap in another size meanwhile
        if inf is None or inf.shape != (h, w):
            inf = self._inf = np.full((h, w), np.inf, np.float32)
        return inf

    def predict(self, rgb):
        """Return a :class:`Prediction` for one HxWx3 uint8 RGB image."""
        return self.predict_batch([rgb])[0]

    def predict_batch(self, images):
        """Run several images (any sizes) as one batch; one Prediction per image."""
        return [self.finish(out) for out in self.infer_batch(images)]

    def infer_batch(self, images):
        """Preprocess and run the model; one :class:`ModelOutput` (model size) per image.

        With :meth:`finish` this splits :meth:`predict_batch` in two, so a node can upsample
        and publish one frame while the model already runs the next.
        """
        if len(images) == 0:
            return []
        t0 = time.perf_counter()
        batch = np.stack([self.preprocess(img) for img in images])
        t_pre = _ms(t0) / len(images)
        t0 = time.perf_counter()
        depth, labels = self.runner(batch)
        t_inf = _ms(t0) / len(images)
        return [ModelOutput(depth[i], labels[i], img.shape[:2],
                            {'preprocess_ms': t_pre, 'inference_ms': t_inf})
                for i, img in enumerate(images)]

    def finish(self, out):
        """Turn a :class:`ModelOutput` into a :class:`Prediction` at the input size."""
        t0 = time.perf_counter()
        depth = out.depth
        if self.ground_contact:
            depth = ground_contact_depth(depth, out.labels, self._ground,
                                         -1 if self.sky_class is None else self.sky_class)
        depth, labels = self.postprocess(depth, out.labels, out.size)
        nan = int(np.count_nonzero(np.isnan(out.depth)))
        timings = {**out.timings, 'postprocess_ms': _ms(t0)}
        return Prediction(depth, labels, timings, nan, small_labels=out.labels)

"""ROS 2 node: camera image in, metric depth + semantic labels out.

Subscribes ``image`` (sensor_msgs/Image; optionally ``image/compressed``) and publishes, with
the input's header and resolution:

* ``depth``: 32FC1 metres along the optical axis (REP 118). +inf where the model sees sky
  (REP 117 "out of range", parameter ``sky_as_infinity``); NaN only where the model itself
  produced NaN (invalid). Never 0 and never clamped.
* ``segmentation``: mono8 class ids (255 = unlabelled), resized nearest.
* ``segmentation_color``: rgb8 labels in the shared palette (computed only with subscribers).
* ``depth/camera_info``: the last ``camera_info`` with each output header, scaled to the
  output size (only once a camera_info arrived).
* ``label_info``: vision_msgs/LabelInfo (transient local) where vision_msgs is installed;
  the class list and colours are always the read-only parameters ``class_names`` and
  ``class_colors``.

The subscription callback only queues the message; a worker thread runs the model on the
newest frame, so a slow model drops frames (counted) instead of building a backlog. With
``pipeline`` (default) a second thread upsamples and publishes each result while the worker
already runs the model on the next frame; it takes one result at a time, so the worker waits
rather than letting results pile up. Health goes to ``/diagnostics`` and a periodic log
line. Run it with
``depth_seg_node --ros-args --params-file config/depth_seg.yaml -p model_path:=DIR``.
"""
import collections
import os
import queue
import signal
import sys
import threading
import time

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

try:  # vision_msgs (apt ros-<distro>-vision-msgs) is optional: no PyPI wheel.
    from vision_msgs.msg import LabelInfo, VisionClass
except ImportError:
    LabelInfo = VisionClass = None

from . import dds, health, node_params
from .image_conversion import (array_to_imgmsg, compressed_to_rgb, ImageConversionError,
                               imgmsg_to_rgb)
from .model_io import ModelLoadError
from .predictor import Predictor

_DONE = object()  # tells the output thread to stop

NODE_NAME = 'depth_seg_node'
_LEVELS = {health.OK: DiagnosticStatus.OK, health.WARN: DiagnosticStatus.WARN,
           health.ERROR: DiagnosticStatus.ERROR}


def _qos(reliability, depth):
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=(ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                     else ReliabilityPolicy.RELIABLE))


def _ms(t0):
    return (time.perf_counter() - t0) * 1000.0


def scale_camera_info(info, header, width, height):
    """Copy a CameraInfo for an image of ``width`` x ``height`` (image_proc resize rules)."""
    out = CameraInfo()
    out.header = header
    out.distortion_model = info.distortion_model
    out.d = info.d
    out.r = info.r
    out.binning_x, out.binning_y = info.binning_x, info.binning_y
    k, p = np.array(info.k, dtype=np.float64), np.array(info.p, dtype=np.float64)
    roi = info.roi
    if info.width and info.height and (info.width, info.height) != (width, height):
        sx, sy = width / info.width, height / info.height
        k[[0, 2]] *= sx
        k[[4, 5]] *= sy
        p[[0, 2, 3]] *= sx
        p[[5, 6, 7]] *= sy
        roi = type(info.roi)(x_offset=int(info.roi.x_offset * sx),
                             y_offset=int(info.roi.y_offset * sy),
                             width=int(info.roi.width * sx), height=int(info.roi.height * sy),
                             do_rectify=info.roi.do_rectify)
    out.k, out.p, out.roi = k, p, roi
    out.width, out.height = width, height
    return out


class DepthSegNode(Node):
    """Depth + segmentation node; ``predictor`` may be injected (tests, replay tools)."""

    def __init__(self, predictor=None, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        try:
            self._setup(predictor)
        except BaseException:
            self.destroy_node()
            raise

    # -- start-up ----------------------------------------------------------------------
    def _setup(self, predictor):
        self.params = self._read_params()
        p = self.params
        # Resizing and colouring take ~1 ms each; OpenCV's own thread pool on top of the
        # inference library's only adds contention (preprocessing 6.9 -> 2.0 ms median on
        # the loaded 2-core development machine, bench/bench_node.py).
        cv2.setNumThreads(1)
        self.predictor = predictor or Predictor.from_path(
            p.model_path, backend=p.backend, device=p.device, precision=p.precision,
            sky_as_infinity=p.sky_as_infinity, threads=p.threads or None,
            ground_contact=node_params.GROUND_CONTACT[p.ground_contact])
        self.declare_parameter(
            'class_names', list(self.predictor.class_names),
            ParameterDescriptor(description='class id -> name, from the model (read only)',
                                read_only=True))
        self.declare_parameter(
            'class_colors', [f'#{r:02x}{g:02x}{b:02x}' for r, g, b in self.predictor.palette],
            ParameterDescriptor(description='class id -> segmentation_color colour, from '
                                            'the model (read only)', read_only=True))
        self.stats = health.FrameStats()
        self._queue = collections.deque(maxlen=p.max_queued_frames)
        self._cv = threading.Condition()
        self._stop = False
        self._camera_info = None

        out_qos = _qos(p.output_reliability, p.output_depth)
        pub_events = PublisherEventCallbacks(incompatible_qos=self._on_incompatible_pub)
        self._pubs = {}
        for key, topic in (('depth', 'depth'), ('segmentation', 'segmentation'),
                           ('segmentation_color', 'segmentation_color')):
            if getattr(p, f'publish_{key}'):
                self._pubs[key] = self.create_publisher(Image, topic, out_qos,
                                                        event_callbacks=pub_events)
        if p.publish_camera_info:
            self._pubs['camera_info'] = self.create_publisher(
                CameraInfo, 'depth/camera_info', out_qos, event_callbacks=pub_events)
            self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info,
                                     _qos(p.input_reliability, 1))
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        if LabelInfo is not None:  # latched class list for Nav2 / RViz consumers
            latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                                 reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._label_info_pub = self.create_publisher(LabelInfo, 'label_info', latched)
            info = LabelInfo(threshold=0.0, class_map=[
                VisionClass(class_id=i, class_name=name)
                for i, name in enumerate(self.predictor.class_names)])
            info.header.stamp = self.get_clock().now().to_msg()
            self._label_info_pub.publish(info)

        in_qos = _qos(p.input_reliability, p.input_depth)
        sub_events = SubscriptionEventCallbacks(incompatible_qos=self._on_incompatible_sub)
        self._subs = [self.create_subscription(
            Image, 'image', lambda m: self._enqueue(m, False), in_qos,
            event_callbacks=sub_events)]
        if p.subscribe_compressed:
            self._subs.append(self.create_subscription(
                CompressedImage, 'image/compressed', lambda m: self._enqueue(m, True), in_qos,
                event_callbacks=sub_events))
        self.create_timer(p.diagnostics_period, self._publish_diagnostics)
        self._last_log = time.monotonic()
        self._results = queue.Queue(maxsize=1) if p.pipeline else None
        self._output_thread = None
        if p.pipeline:
            self._output_thread = threading.Thread(target=self._output_loop,
                                                   name='depth_seg_output', daemon=True)
            self._output_thread.start()
        self._worker = threading.Thread(target=self._work, name='depth_seg_worker',
                                        daemon=True)
        self._worker.start()
        self.get_logger().info(
            f'model {p.model_path}: {self.predictor.description}, model input '
            f'{self.predictor.width}x{self.predictor.height}; subscribed to '
            f'{self._subs[0].topic_name} ({p.input_reliability}); publishing '
            f'{", ".join(sorted(self._pubs))}')

    def _read_params(self):
        """Declare every parameter (dynamically typed so our checks give the message)."""
        values = {}
        for name, default in node_params.defaults().items():
            desc = ParameterDescriptor(description=node_params.DESCRIPTIONS[name],
                                       dynamic_typing=True)
            values[name] = self.declare_parameter(name, default, desc).value
        # A misspelt key in the params file or on the command line would otherwise be
        # silently ignored by rclpy: refuse it, naming the closest real parameter.
        node_params.check_unknown(getattr(self, '_parameter_overrides', {}))
        return node_params.validate(values)

    # -- input -------------------------------------------------------------------------
    def _enqueue(self, msg, compressed):
        t_recv = time.perf_counter()
        self.stats.count('frames_in')
        with self._cv:
            if len(self._queue) == self._queue.maxlen:
                self.stats.count('dropped')  # the oldest queued frame falls out
            self._queue.append((msg, compressed, t_recv))
            self._cv.notify()

    def _on_camera_info(self, msg):
        self._camera_info = msg

    def _on_incompatible_sub(self, event):
        self.get_logger().warning(
            f'a publisher on {self._subs[0].topic_name} has incompatible QoS (policy '
            f'{event.last_policy_kind}); this subscription is {self.params.input_reliability}'
            f': set input_reliability to match or make the camera best effort')

    def _on_incompatible_pub(self, event):
        self.get_logger().warning(
            f'a subscriber to an output has incompatible QoS (policy {event.last_policy_kind}); '
            f'outputs are {self.params.output_reliability} (parameter output_reliability)')

    # -- worker ------------------------------------------------------------------------
    def _work(self):
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait(0.5)
                if self._stop:
                    return
                item = self._queue.popleft()
            job = self._guarded(self._infer, *item)
            if job is None:
                continue
            if self._results is None:
                self._guarded(self._finish, job)
                continue
            while not self._stop:  # wait for the output thread; never queue a second result
                try:
                    self._results.put(job, timeout=0.5)
                    break
                except queue.Full:
                    pass

    def _output_loop(self):
        while True:
            job = self._results.get()
            if job is _DONE:
                return
            self._guarded(self._finish, job)

    def _guarded(self, stage, *args):
        """Run one frame's stage; count and log a failure instead of ending the thread."""
        try:
            return stage(*args)
        except Exception as exc:  # noqa: BLE001 - the node must keep serving
            self.stats.count('failed')
            self.stats.error(f'{type(exc).__name__}: {exc}')
            self.get_logger().error(f'frame failed: {type(exc).__name__}: {exc}',
                                    throttle_duration_sec=self.params.warn_throttle_period)
            return None

    def _reject(self, msg, exc):
        self.stats.count('malformed')
        self.stats.error(str(exc))
        self.get_logger().warning(
            f'rejected image (frame_id {msg.header.frame_id!r}): {exc} '
            f'[{self.stats.counts["malformed"]} rejected so far]',
            throttle_duration_sec=self.params.warn_throttle_period)

    def process(self, msg, compressed=False, t_recv=None):
        """Convert, infer and publish one frame; return the Prediction or None if rejected."""
        job = self._infer(msg, compressed, t_recv)
        return None if job is None else self._finish(job)

    def _infer(self, msg, compressed=False, t_recv=None):
        """Convert and run the model (worker thread); None when the message is rejected."""
        t_recv = time.perf_counter() if t_recv is None else t_recv
        p = self.params
        t0 = time.perf_counter()
        try:
            rgb = (compressed_to_rgb(msg, p.max_input_pixels) if compressed
                   else imgmsg_to_rgb(msg, p.max_input_pixels))
        except ImageConversionError as exc:
            self._reject(msg, exc)
            return None
        stages = {'conversion': _ms(t0)}
        out = self.predictor.infer_batch([rgb])[0]
        return msg.header, out, stages, t_recv

    def _finish(self, job):
        """Upsample, colour and publish one model output (output thread or worker)."""
        header, out, stages, t_recv = job
        p = self.params
        pred = self.predictor.finish(out)
        stages['preprocess'] = pred.timings['preprocess_ms']
        stages['inference'] = pred.timings['inference_ms']
        stages['postprocess'] = pred.timings['postprocess_ms']
        if pred.nan_pixels:
            self.stats.count('nonfinite')
            self.stats.error(f'model produced NaN depth in {pred.nan_pixels} pixels')
            self.get_logger().warning(
                f'model produced NaN depth in {pred.nan_pixels} of '
                f'{self.predictor.width * self.predictor.height} pixels (published as NaN = '
                f'invalid) [{self.stats.counts["nonfinite"]} frames so far]',
                throttle_duration_sec=p.warn_throttle_period)
        color_pub = self._pubs.get('segmentation_color')
        if color_pub is not None and color_pub.get_subscription_count() > 0:
            t0 = time.perf_counter()
            color = pred.color
            stages['postprocess'] += _ms(t0)
        else:
            color = None
        t0 = time.perf_counter()
        self._publish(header, pred, color)
        stages['publish'] = _ms(t0)
        self.stats.frame_done(_ms(t_recv), stages)
        pred.timings.update({f'{k}_ms': v for k, v in stages.items()})
        return pred

    def _publish(self, header, pred, color):
        pubs = self._pubs
        outputs = (('depth', pred.depth, '32FC1'), ('segmentation', pred.labels, 'mono8'),
                   ('segmentation_color', color, 'rgb8'))
        for key, arr, encoding in outputs:
            pub = pubs.get(key)
            if pub is not None and arr is not None and pub.get_subscription_count() > 0:
                pub.publish(array_to_imgmsg(arr, encoding, header, zero_copy=True))
        info_pub = pubs.get('camera_info')
        if info_pub is not None and self._camera_info is not None:
            h, w = pred.depth.shape
            info_pub.publish(scale_camera_info(self._camera_info, header, w, h))

    # -- health ------------------------------------------------------------------------
    def _publish_diagnostics(self):
        report = self.stats.report()
        level, message = health.level_and_message(report)
        status = DiagnosticStatus(
            level=_LEVELS[level], name=f'{self.get_fully_qualified_name()}: depth_seg',
            message=message, hardware_id=self.params.hardware_id or self.params.model_path,
            values=[KeyValue(key=k, value=v) for k, v in health.key_values(report)])
        status.values.append(KeyValue(key='backend', value=self.predictor.description))
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)
        period = self.params.log_period
        if period > 0 and time.monotonic() - self._last_log >= period:
            self._last_log = time.monotonic()
            self.get_logger().info(health.log_line(report))
        return report

    def destroy_node(self):
        """Stop the worker, then let the output thread publish what it holds and stop."""
        cv = getattr(self, '_cv', None)
        if cv is not None:
            with cv:
                self._stop = True
                cv.notify_all()
        for name in ('_worker', '_output_thread'):
            thread = getattr(self, name, None)
            if thread is None or thread is threading.current_thread():
                continue
            if name == '_output_thread':
                try:  # after the last result: the worker has stopped
                    self._results.put(_DONE, timeout=5.0)
                except queue.Full:
                    pass
            thread.join(timeout=5.0)
        return super().destroy_node()


class ShutdownSignals:
    """SIGINT/SIGTERM handlers that only ask the spin loop to stop, however often they come.

    Ctrl-C under ``ros2 launch`` reaches the node twice (terminal and launch), the second
    time while it shuts down; a handler that raises KeyboardInterrupt there leaves a
    traceback and exit code -2. These handlers never raise. Once the node is shut down,
    :meth:`ignore` makes the signals ignored for the rest of the process: Python resets
    handlers it set to the default action when it finalizes, and a late signal would then
    kill the exiting process (exit code -2), but it leaves an ignored signal ignored.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = []
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.received.append(signum)

    def ignore(self):
        """Ignore SIGINT and SIGTERM from now on (the process is about to exit)."""
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    @property
    def requested(self):
        """Tell whether a shutdown signal arrived."""
        return bool(self.received)


def missing_params_files(argv):
    """Return the ``--params-file`` paths in the ROS arguments of ``argv`` that are no file."""
    missing, in_ros = [], False
    for i, arg in enumerate(argv):
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg == '--params-file' and i + 1 < len(argv):
            if not os.path.isfile(argv[i + 1]):
                missing.append(argv[i + 1])
    return missing


def main(args=None):
    """Console script: apply the Fast DDS profile, start the node, spin until shut down."""
    signals = ShutdownSignals()  # first: a signal during start-up must not raise either
    logger = rclpy.logging.get_logger(NODE_NAME)
    missing = missing_params_files(sys.argv if args is None else args)
    if missing:  # rcl would fail with a parser traceback (launch_ros: only a warning)
        logger.fatal(f'cannot start: params file not found: {", ".join(missing)}')
        signals.ignore()
        return 1
    dds_note = dds.apply_default_profile()  # before rclpy.init creates the participant
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = DepthSegNode()
    except (node_params.ParameterError, ModelLoadError, ValueError) as exc:
        logger.fatal(f'cannot start: {exc}')
        rclpy.try_shutdown()
        signals.ignore()
        return 1
    node.get_logger().info(dds_note)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        # Short waits: the Python-level signal handler runs between them.
        while not signals.requested and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except ExternalShutdownException:
        pass
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
        signals.ignore()
    return 0


if __name__ == '__main__':
    sys.exit(main())

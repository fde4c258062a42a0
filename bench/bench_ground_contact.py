"""What ground-contact depth costs a frame: the predictor's post-processing with and without.

``model.ground_contact`` runs in ``Predictor.finish`` (numpy, at the model size, before the
upsampling), so its cost shows in the ``postprocess_ms`` timing the node also reports. This
script runs one exported model over real-style frames, once with it off and once on (the
same frames, alternating per frame so a busy moment hits both), and prints and saves the
median ``postprocess_ms`` of each and their difference. Docs: docs/benchmarks.md.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/bench_ground_contact.py',
        description='Time model.ground_contact: median postprocess_ms of the predictor with '
                    'it off and on, over the frames of a KITTI-layout tree '
                    '(docs/benchmarks.md).')
    p.add_argument('--model', required=True,
                   help='an exported model directory (config.json + model.safetensors)')
    p.add_argument('--data', default='outputs/bench_transfer/data',
                   help='a KITTI-layout tree whose image_02 frames are read (default: '
                        '%(default)s, the transfer benchmark\'s)')
    p.add_argument('--frames', type=int, default=60,
                   help='frames timed, each once per setting (default: %(default)s)')
    p.add_argument('--backend', default='onnxruntime', choices=('torch', 'onnxruntime'),
                   help='inference backend (default: %(default)s; onnxruntime needs '
                        'model.onnx)')
    p.add_argument('--out', default=str(REPO / 'bench' / 'results' / 'ground_contact_time.json'),
                   help='JSON output (default: bench/results/ground_contact_time.json)')
    return p


def read_frames(root, count):
    """Return up to ``count`` RGB uint8 frames from ``root``'s image_02 folders, sorted."""
    import cv2
    paths = sorted(Path(root).glob('**/image_02/data/*.png'))[:count]
    if not paths:
        raise SystemExit(f'error: no **/image_02/data/*.png under {root}: create it with '
                         'python bench/bench_transfer.py')
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def main(argv=None):
    """Time both settings; exit 0."""
    args = build_parser().parse_args(argv)
    from sim2real_perception.predictor import Predictor
    frames = read_frames(args.data, args.frames)
    predictor = Predictor.from_path(args.model, backend=args.backend, device='cpu')
    predictor.predict(frames[0])   # warm-up
    times = {False: [], True: []}
    for image in frames:
        out = predictor.infer_batch([image])[0]
        for on in (False, True):
            predictor.ground_contact = on
            times[on].append(predictor.finish(out).timings['postprocess_ms'])
    off, on = statistics.median(times[False]), statistics.median(times[True])
    result = {
        'command': ' '.join(['python', 'bench/bench_ground_contact.py',
                             *(sys.argv[1:] if argv is None else argv)]),
        'date': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'model': str(args.model), 'backend': predictor.backend, 'frames': len(frames),
        'frame_size': list(frames[0].shape[:2]),
        'model_size': [predictor.height, predictor.width],
        'postprocess_ms_median': {'off': off, 'on': on},
        'ground_contact_ms': on - off,
        'postprocess_ms_p90': {'off': float(np.percentile(times[False], 90)),
                               'on': float(np.percentile(times[True], 90))},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f'{len(frames)} frames {frames[0].shape[1]}x{frames[0].shape[0]}, model '
          f'{predictor.width}x{predictor.height}: postprocess_ms median off {off:.2f}, on '
          f'{on:.2f}: ground contact {on - off:.2f} ms a frame; wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())

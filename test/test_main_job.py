"""The main job end to end (``--quick``), its report, step reuse, and the step machinery."""
import json
import math
import os
import subprocess
import sys
import time

import pytest

from training import main_job
from training.steps import Pipeline, StepFailed

MAIN = main_job.DEFAULT_MODEL
STEPS = ('data', f'train_{MAIN}', 'train_sim_only', 'train_mean_prior', f'onnx_{MAIN}',
         'onnx_sim_only', 'onnx_mean_prior', 'evaluate_torch', 'evaluate_onnxruntime',
         'make_bag', 'replay')


def run_job(repo_root, workdir, *extra):
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'training.main_job', '--quick', '--workdir', str(workdir),
         *extra],
        cwd=repo_root, capture_output=True, text=True, timeout=600,
        env={**os.environ, 'OMP_NUM_THREADS': '1'})
    return proc, time.monotonic() - t0


@pytest.fixture(scope='module')
def first(repo_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp('main_job')
    proc, seconds = run_job(repo_root, workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir, proc, seconds


def test_quick_run_report(first):
    workdir, proc, _ = first
    out = proc.stdout
    for i, name in enumerate(STEPS + ('report',), start=1):
        assert f'[main_job {i}/{len(STEPS) + 1}] {name}:' in out
    assert '-> AGREE' in out and 'exit code 0 (clean)' in out
    report = json.loads((workdir / 'report.json').read_text())
    offline = report['offline']
    assert report['main_model'] == MAIN
    assert set(offline) == {MAIN, 'sim_only', 'mean_prior'}
    # The floor predicts one map for every frame; the report says how much each follows.
    assert offline['mean_prior']['segmentation']['label_change_share'] == 0.0
    assert 0 < offline[MAIN]['segmentation']['gt_label_change_share'] < 1
    assert f'{MAIN} vs mean_prior:' in out and f'{MAIN} vs sim_only:' in out
    assert 'LblChg' in out and 'ground truth' in out
    for result in list(offline.values()) + [report['replay']]:
        assert math.isfinite(result['depth']['abs_rel']) and result['depth']['n_pixels'] > 0
        assert math.isfinite(result['segmentation']['miou'])
    rep = report['replay']
    n = offline[MAIN]['frames']
    assert n == 4  # 16 real-style frames, 4 drives, the last quarter of each
    assert rep['frames_in_bag'] == rep['frames_sent'] == rep['frames_answered'] == n
    assert rep['frames_dropped'] == 0
    assert rep['node']['clean_stop'] and rep['node']['command'][0].endswith('depth_seg_node')
    cmp_ = report['offline_vs_replay']
    assert cmp_['agree'] and cmp_['max_rel_diff'] <= main_job.AGREE_RTOL
    # Check the agreement from the tools' own outputs, not from the job's summary of them.
    ev = json.loads((workdir / 'eval' / 'onnxruntime' / 'eval.json').read_text())
    replayed = json.loads((workdir / 'replay' / 'replay.json').read_text())
    assert ev['models'][MAIN]['runtime'].startswith('onnxruntime')
    for section, keys in (('depth', main_job.DEPTH_KEYS), ('segmentation', main_job.SEG_KEYS)):
        for key in keys:
            assert replayed[section][key] == pytest.approx(
                ev['models'][MAIN][section][key], rel=main_job.AGREE_RTOL), key
    assert report['torch_vs_onnxruntime_max_abs_diff'] < 1e-3
    lat = report['latency_ms']
    assert 0 < lat['p50'] <= lat['p90'] <= lat['p99'] and report['rate_hz'] > 0
    for path in report['figures'].values():
        assert os.path.getsize(path) > 1000, path
    assert (workdir / 'report.txt').read_text().strip() in out


def test_second_run_reuses_every_step(first, repo_root):
    workdir, _, seconds = first
    proc, again = run_job(repo_root, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('reused (done earlier; --fresh to redo)') == len(STEPS)
    report = json.loads((workdir / 'report.json').read_text())
    assert report['seconds']['reused'] == list(STEPS)
    assert report['offline_vs_replay']['agree']
    assert again < seconds


def py(code):
    return [sys.executable, '-c', code]


def test_pipeline_reuse_invalidation_resume_and_failure(tmp_path, capsys):
    """Changed input re-runs later steps from clean outputs; interrupted steps resume."""
    work = tmp_path / 'w'
    a_out, b_out = work / 'a.txt', work / 'b'
    write_a = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    copy_b = ("import sys, os; os.makedirs(sys.argv[2], exist_ok=True); "
              "open(os.path.join(sys.argv[2], 'n'), 'a').write(open(sys.argv[1]).read()"
              " + ' ' + ' '.join(sys.argv[3:]) + '|')")

    def job(value, fresh=False, resume=()):
        pipe = Pipeline(work, fresh=fresh, total=2, prefix='t')
        pipe.run('a', py(write_a) + [a_out, value], 'write a', outputs=[a_out])
        pipe.run('b', py(copy_b) + [a_out, b_out], 'copy a', outputs=[b_out],
                 resume_args=resume)
        return pipe

    assert job('1').reused == []
    assert (b_out / 'n').read_text() == '1 |'
    assert job('1').reused == ['a', 'b']
    assert job('2').reused == []  # a changed: b re-runs, from clean outputs
    assert (b_out / 'n').read_text() == '2 |'
    assert job('2', fresh=True).reused == []
    (work / 'steps' / 'b.done.json').unlink()  # as if b had been killed half-way
    assert job('2', resume=['--resume']).reused == ['a']
    assert (b_out / 'n').read_text() == '2 |2 --resume|'  # resumed, outputs kept
    out = capsys.readouterr().out
    assert '[t 1/2] a: write a' in out and 'reused (done earlier' in out
    pipe = Pipeline(work, fresh=False, total=1, heartbeat=0.3)
    pipe.run('quiet', py('import time; time.sleep(1.5); print("end")'), 'silent a while',
             hint=lambda: 'halfway')
    out = capsys.readouterr().out
    assert '  ... quiet running for ' in out and ': halfway' in out and '  | end' in out
    with pytest.raises(StepFailed, match=r"step 'bad' failed with exit code 3; log: .*bad.log"):
        pipe.run('bad', py('import sys; print("boom"); sys.exit(3)'), 'fail')
    assert 'boom' in (work / 'steps' / 'bad.log').read_text()
    with pytest.raises(ValueError, match='outside'):
        pipe.run('c', py('pass'), 'c', outputs=[tmp_path / 'elsewhere'])


def test_an_edited_preset_redoes_the_training_step(tmp_path):
    """The command names the preset; its resolved content is part of the step's key."""
    from training.main_job import config_digest
    preset = tmp_path / 'mine.yaml'
    preset.write_text('model:\n  prior: none\n')
    before = config_digest(str(preset), ['train.seed=1'])
    assert config_digest(str(preset), ['train.seed=1']) == before
    assert config_digest(str(preset), ['train.seed=2']) != before
    preset.write_text('model:\n  prior: residual\n')
    edited = config_digest(str(preset), ['train.seed=1'])
    assert edited != before
    work = tmp_path / 'w'
    for extra, reused in ((before, []), (before, ['t']), (edited, [])):
        pipe = Pipeline(work, total=1)
        pipe.run('t', py('pass'), 'train', key_extra=extra)
        assert pipe.reused == reused


def test_help_lists_every_option():
    text = main_job.build_parser().format_help()
    for option in ('--workdir', '--fresh', '--quick', '--with-oracle', '--config',
                   '--sim-frames', '--real-frames', '--height', '--width', '--eval-frames',
                   '--val-fraction', '--frames-per-sequence', '--seed', '--threads', '--set'):
        assert option in text
    assert 'Exit status' in text and 'depth_seg_node' in text
    args = main_job.resolve_args(['--quick', '--real-frames', '20'])
    assert (args.config, args.real_frames, args.sim_frames) == ('test', 20, 8)
    assert args.baseline_steps == 0                       # --quick: the test preset's steps
    full = main_job.resolve_args([])
    assert (full.config, full.baseline_steps) == ('cpu', 300)
    assert '--baseline-steps' in text


def test_twin_vae_as_the_main_model(repo_root, tmp_path):
    """``--model twin_vae``: the twin-VAE is trained, served by the node and compared."""
    proc, _ = run_job(repo_root, tmp_path, '--model', 'twin_vae')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / 'report.json').read_text())
    assert report['main_model'] == 'twin_vae'
    assert set(report['offline']) == {'twin_vae', 'sim_only', 'mean_prior'}
    assert report['offline_vs_replay']['model'] == 'twin_vae'
    assert report['offline_vs_replay']['agree']
    assert 'train the twin-VAE' in proc.stdout and 'twin_vae vs sim_only:' in proc.stdout
    meta = json.loads((tmp_path / 'runs' / 'twin_vae' / 'export' / 'config.json').read_text())
    assert meta['metadata']['method'] == 'twin_vae'


def test_baselines_get_their_own_step_budget(first):
    assert main_job.method_sets('sim_only', 300) == ['data.sim.appearance_aug=0.0',
                                                     'train.supervised_steps=300']
    assert main_job.method_sets('oracle', 300) == ['train.supervised_steps=300']
    assert main_job.method_sets('twin_vae', 300) == []    # the twin-VAE keeps the preset's
    assert main_job.method_sets('sim_only', 0) == ['data.sim.appearance_aug=0.0']
    # A main-model recipe trains at the preset's full budget with its own overrides only.
    assert main_job.method_sets('sim_only_region', 300) == ['data.sim.region_aug=1.0']
    assert main_job.RECIPES['sim_only_region'][0] == 'sim_only'
    assert main_job.method_sets('sim_only_region_kitti', 300) == [
        'data.sim.region_aug=1.0', 'data.sim.relabel={van: car}']
    assert main_job.DEFAULT_MODEL in main_job.RECIPES
    # A self-training recipe keeps its steps, except in --quick (the test preset's few).
    full = main_job.method_sets('sim_only_region_kitti_st', 300)
    assert 'train.self_train_steps=250' in full and main_job.QUICK_SELF_TRAIN not in full
    assert main_job.method_sets('sim_only_region_kitti_st', 0, quick=True)[-1] == \
        main_job.QUICK_SELF_TRAIN
    workdir, _, _ = first
    meta = json.loads((workdir / 'runs' / 'sim_only' / 'export' / 'config.json').read_text())
    assert meta['metadata']['steps'] == {'supervised': 4}  # 0: the test preset's 4


def test_replay_step_leaves_a_bag_of_inputs_and_answers(first):
    """The run's recording (replay/outputs_bag) read back: what the replay scored, per frame."""
    from rosbags.rosbag2 import Reader
    from training import bag_format as bf
    from training.data.ros_images import raw_array
    from training.metrics import DepthMetrics, SegMetrics
    from sim2real_perception.labels import IGNORE_INDEX, NUM_CLASSES
    workdir = first[0]
    replayed = json.loads((workdir / 'replay' / 'replay.json').read_text())
    bag = workdir / 'replay' / main_job.OUTPUTS_BAG
    assert replayed['recording']['bag'] == str(bag)
    ts = bf.typestore()
    msgs = {}
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(ts.deserialize_cdr(raw, conn.msgtype))
    assert {t: len(m) for t, m in msgs.items()} == replayed['recording']['messages']
    n = replayed['frames_answered']
    for topic in ('/camera/image_raw', '/depth', '/segmentation', '/segmentation_color'):
        assert len(msgs[topic]) == n, topic
    assert len(msgs['/camera/camera_info']) == n
    assert len(msgs['/depth/camera_info']) == n   # each frame's camera_info goes out first

    def key(m):
        return m.header.stamp.sec, m.header.stamp.nanosec

    gt = {}
    with Reader(workdir / 'eval_bag') as reader:
        for conn, _, raw in reader.messages():
            if conn.topic in (bf.GT_DEPTH_TOPIC, bf.GT_LABELS_TOPIC):
                msg = ts.deserialize_cdr(raw, conn.msgtype)
                gt[conn.topic, key(msg)] = msg
    opts = replayed['options']
    depth = DepthMetrics(min_depth=opts['min_depth'], max_depth=opts['max_depth'],
                         garg_crop=opts['garg_crop'], median_scaling=opts['median_scaling'])
    seg = SegMetrics(num_classes=NUM_CLASSES, ignore_index=IGNORE_INDEX)
    from training.data.ros_images import decode
    answers = {t: {key(m): m for m in msgs[t]} for t in ('/depth', '/segmentation')}
    for image in msgs['/camera/image_raw']:
        k = key(image)
        assert answers['/depth'][k].header.frame_id == image.header.frame_id
        depth.update(raw_array(answers['/depth'][k]),
                     decode(gt[bf.GT_DEPTH_TOPIC, k], 'depth'))
        seg.update(raw_array(answers['/segmentation'][k]),
                   decode(gt[bf.GT_LABELS_TOPIC, k], 'labels'))
    for section, computed in (('depth', depth.compute()), ('segmentation', seg.compute())):
        for name in (main_job.DEPTH_KEYS if section == 'depth' else main_job.SEG_KEYS):
            assert computed[name] == pytest.approx(replayed[section][name], rel=1e-6), name

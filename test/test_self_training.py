# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""train.self_train_steps: sim_only labels the real frames once and trains on them."""
import csv
import json
import math
import signal

import numpy as np
import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model_io import load_depth_seg_net
from sim2real_perception.onnx_export import export_onnx, parity_check
from training import compare, losses, train
from training import self_training as st


def test_class_thresholds_keep_each_class_s_most_confident_share():
    labels = np.array([[0, 0, 0, 0], [1, 1, 3, 3]], np.uint8)
    conf = np.array([[0.25, 0.5, 0.75, 0.875], [0.9375, 0.96875, 0.5, 0.5]], np.float16)
    t = st.class_thresholds(labels, conf, num_classes=4, keep=0.5, cap=0.9)
    # class 0: the upper half of 0.25 .. 0.875 starts at 0.75; class 1: both above the cap,
    # so the cap; class 2: never predicted, the cap; class 3: a tie, both kept.
    assert t.tolist() == pytest.approx([0.75, 0.9, 0.9, 0.5])
    kept = st.select(labels, conf, t)
    assert kept.tolist() == [[255, 255, 0, 0], [1, 1, 3, 3]]
    everything = st.select(labels, conf, st.class_thresholds(labels, conf, 4, 1.0, 0.9))
    assert np.array_equal(everything, labels)
    with pytest.raises(ValueError, match='self_train_keep'):
        st.class_thresholds(labels, conf, 4, 0.0, 0.9)


def test_labels_file_round_trip_holds_plain_arrays_for_the_same_frames(tmp_path):
    labels = np.random.default_rng(0).integers(0, 12, (3, 4, 5)).astype(np.uint8)
    path = tmp_path / st.LABELS_FILE
    st.save_labels(path, labels, np.full(12, 0.5), ['a', 'b', 'c'])
    with np.load(path, allow_pickle=False) as f:   # nothing in it needs unpickling
        assert {k: f[k].dtype.kind for k in f.files} == {
            'labels': 'u', 'thresholds': 'f', 'names': 'U'}
    got, thresholds = st.load_labels(path, ['a', 'b', 'c'])
    assert np.array_equal(got, labels) and thresholds.tolist() == [0.5] * 12
    with pytest.raises(ValueError, match='delete it to relabel'):
        st.load_labels(path, ['a', 'b', 'x'])


def test_pseudo_labelled_frames_flip_image_and_labels_together():
    image = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    frames = [{'image': image[i], 'depth': torch.ones(1, 4, 6), 'name': f'f{i}'}
              for i in range(2)]
    labels = np.tile(np.arange(6, dtype=np.uint8), (2, 4, 1))
    ds = st.PseudoLabelled(frames, labels, seed=1)
    flips = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        flipped = bool(item['labels'][0, 0] == 5)
        flips.add(flipped)
        want = image[0].flip(-1) if flipped else image[0]
        assert torch.equal(item['image'], want)
        assert item['has_labels'] and not item['has_depth'] and not item['depth'].any()
        assert torch.equal(ds[0]['labels'], item['labels'])   # seeded by (epoch, index)
    assert flips == {True, False}
    with pytest.raises(ValueError, match='label maps'):
        st.PseudoLabelled(frames, labels[:1])


def test_self_train_terms_learn_the_given_real_labels():
    cfg = load_config('test')
    from sim2real_perception.model import ModelConfig, TwinVAE
    mc = ModelConfig.from_dict(cfg['model'])
    torch.manual_seed(0)
    net = TwinVAE(mc)
    sim = {'image': torch.rand(2, 3, 128, 128) * 2 - 1, 'depth': torch.full((2, 1, 128, 128), 9.0),
           'labels': torch.zeros(2, 128, 128, dtype=torch.long)}
    real = {'image': torch.rand(2, 3, 128, 128) * 2 - 1,
            'labels': torch.full((2, 128, 128), 255, dtype=torch.long)}
    real['labels'][:, :64] = 7
    terms, _ = losses.self_train_terms(net, sim, real, mc)
    assert list(terms) == [k for k in losses.SELF_TRAIN_TERMS if k != 'self_train_depth']
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = float(terms['self_train_ce'].detach())
    for _ in range(15):
        terms, _ = losses.self_train_terms(net, sim, real, mc)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    assert float(terms['self_train_ce'].detach()) < 0.5 * first  # class 7, upper half


def test_paste_classes_copies_the_sim_frame_s_classes_with_their_labels():
    real_img = torch.zeros(3, 3, 4, 5)
    real_lab = torch.full((3, 4, 5), 255, dtype=torch.long)
    real_lab[:, 0] = 2                        # the real frames' own labels (row 0)
    sim_lab = torch.zeros(2, 4, 5, dtype=torch.long)
    sim_lab[0, 1, 1:3] = 10                   # a car in sim frame 0
    sim_lab[1, 0, 4] = 8                      # a pole in sim frame 1, over a real label
    sim_lab[1, 3, 0] = 255                    # unlabelled sim pixels are never pasted
    sim = {'image': torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) + 1,
           'labels': sim_lab}
    img, lab, pasted = losses.paste_classes(real_img, real_lab, sim, (10, 8))
    mask = torch.zeros(3, 4, 5, dtype=torch.bool)
    mask[0, 1, 1:3] = mask[1, 0, 4] = True
    assert torch.equal(img, torch.where(mask[:, None], torch.cat([sim['image'], real_img[2:]]),
                                        real_img))
    assert torch.equal(pasted, mask[:2])      # the pasted pixels of the frames with a pair
    want = real_lab.clone()
    want[0, 1, 1:3], want[1, 0, 4] = 10, 8
    assert torch.equal(lab, want)             # the third real frame has no sim pair: as it was
    assert torch.equal(real_lab[:, 0], torch.full((3, 5), 2))   # inputs untouched


def test_pasted_objects_teach_their_sim_depth_and_the_rest_keeps_the_clean_frame_s():
    """loss.self_train_depth: the pasted pixels learn their sim depth, the rest keeps its own."""
    from sim2real_perception.model import ModelConfig, TwinVAE
    mc = ModelConfig.from_dict(load_config('test')['model'])
    torch.manual_seed(0)
    net = TwinVAE(mc)
    sim_lab = torch.zeros(2, 128, 128, dtype=torch.long)
    sim_lab[0, 80:100, 20:60] = 10            # a car in sim frame 0
    sim_lab[1, 40:90, 100:104] = 8            # a pole in sim frame 1
    depth = torch.full((2, 1, 128, 128), 30.0)
    depth[0, 0, 80:100, 20:60], depth[1, 0, 40:90, 100:104] = 12.0, 6.0
    sim = {'image': torch.rand(2, 3, 128, 128) * 2 - 1, 'depth': depth, 'labels': sim_lab}
    real = {'image': torch.rand(3, 3, 128, 128) * 2 - 1,
            'labels': torch.full((3, 128, 128), 3, dtype=torch.long)}

    def terms(sim_batch):
        torch.manual_seed(1)
        return losses.self_train_terms(net, sim_batch, real, mc, paste=(10, 8), sim_terms=False,
                                       paste_depth=True)[0]
    got = {k: v.detach() for k, v in terms(sim).items()}
    assert list(got) == ['self_train_ce', 'self_train_depth']
    # By hand, in the same order of draws: the pasted pixels to their sim depth, the rest
    # to the network's own depth of the clean frame, one mean each.
    image, _, mask = losses.paste_classes(real['image'], real['labels'], sim, (10, 8))
    torch.manual_seed(1)
    with torch.no_grad():
        mu, _, clean_feats = net.encode_skips(real['image'], 'real')
        anchor = net.decode(mu, 'depth', clean_feats)
    _, z, feats = net.encode_skips(losses.strong_view(image), 'real')
    d, _ = net.decode_heads(z, feats)
    target, _ = losses.depth_targets(depth, mc)
    rest = torch.cat([~mask, torch.ones_like(mask[:1])])[:, None]
    want = (d[:2] - target)[mask[:, None]].pow(2).mean() + (d - anchor)[rest].pow(2).mean()
    assert float(got['self_train_depth']) == pytest.approx(float(want), rel=1e-5)
    far_elsewhere = dict(sim, depth=torch.where(sim_lab[:, None] == 0,
                                                torch.full_like(depth, 70.0), depth))
    assert float(terms(far_elsewhere)['self_train_depth']) == float(got['self_train_depth'])
    nearer_car = dict(sim, depth=depth * 0.5)
    assert float(terms(nearer_car)['self_train_depth']) != float(got['self_train_depth'])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(15):
        loss = terms(sim)['self_train_depth']
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * float(got['self_train_depth'])
    with pytest.raises(ValueError, match='self_train_depth needs pasted'):
        losses.self_train_terms(net, sim, real, mc, paste_depth=True)


def test_classmix_pastes_whole_classes_half_of_those_each_sim_frame_holds():
    torch.manual_seed(3)
    sim_lab = torch.randint(0, 5, (2, 8, 8))
    sim_lab[1] = torch.where(sim_lab[1] == 4, torch.full_like(sim_lab[1], 255), sim_lab[1])
    sim = {'image': torch.rand(2, 3, 8, 8) + 2.0, 'labels': sim_lab}
    real_lab = torch.full((2, 8, 8), 7, dtype=torch.long)
    img, lab, _ = losses.paste_classes(torch.zeros(2, 3, 8, 8), real_lab, sim,
                                       losses.CLASSMIX)
    for i in range(2):
        pasted = lab[i] != 7
        assert torch.equal(pasted, img[i, 0] > 0)
        assert torch.equal(lab[i][pasted], sim_lab[i][pasted])
        present = [c for c in sim_lab[i].unique().tolist() if c != 255]
        chosen = lab[i][pasted].unique().tolist()
        assert len(chosen) == (len(present) + 1) // 2 and 255 not in chosen
        for c in chosen:   # whole classes: every pixel of a chosen class
            assert bool(pasted[sim_lab[i] == c].all())
    assert train.self_train_paste({'self_train_paste': 'classmix'}) == losses.CLASSMIX


def test_self_training_with_pasted_classes_loads_sim_frames_but_not_their_terms(
        tiny_data, tmp_path, monkeypatch):
    seen = []
    original = losses.paste_classes

    def recording(image, labels, sim, classes):
        out = original(image, labels, sim, classes)
        seen.append((classes, bool((out[1] != labels).any())))
        return out
    monkeypatch.setattr(losses, 'paste_classes', recording)
    sets = _sets(tiny_data, extra=['train.self_train_sim=false', 'train.self_train_batch=2',
                                   'train.self_train_paste=[road, car]'])
    trainer = train.Trainer(load_config('test', sets), tmp_path, 'sim_only')
    summary = trainer.run('all')
    trainer.close()
    assert summary['steps'] == {'supervised': 3, 'self_train': 3}
    assert [c for c, _ in seen] == [(4, 10)] * 3 and any(changed for _, changed in seen)
    with open(tmp_path / 'logs' / 'self_train.csv') as fh:   # no sim supervision terms
        header = next(csv.reader(fh))
    assert header[-1] == 'self_train_ce' and 'depth' not in header and 'ce' not in header
    assert train.main(['--config', 'test', '--run-dir', str(tmp_path / 'bad'), '--method',
                       'sim_only', '--set', *_sets(tiny_data, extra=[
                           'train.self_train_paste=[lorry]'])]) == 2
    assert train.main(['--config', 'test', '--run-dir', str(tmp_path / 'bad2'), '--method',
                       'sim_only', '--set', *_sets(tiny_data, extra=[
                           'loss.self_train_depth=1.0'])]) == 2


def test_self_training_with_pasted_depth_logs_and_trains_the_depth_term(tiny_data, tmp_path):
    sets = _sets(tiny_data, extra=['train.self_train_sim=false', 'train.self_train_batch=2',
                                   'train.self_train_paste=[road, car]',
                                   'loss.self_train_depth=1.0'])
    trainer = train.Trainer(load_config('test', sets), tmp_path, 'sim_only')
    summary = trainer.run('all')
    trainer.close()
    assert summary['steps'] == {'supervised': 3, 'self_train': 3}
    with open(tmp_path / 'logs' / 'self_train.csv') as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-2:] == ['self_train_ce', 'self_train_depth']
    assert all(math.isfinite(float(r[-1])) and float(r[-1]) > 0 for r in rows[1:])


def _sets(tiny_data, steps=3, extra=()):
    return [f'data.{k}.root={tiny_data}' for k in ('sim', 'real', 'eval')] + [
        f'data.{k}.val_fraction=0.25' for k in ('sim', 'real', 'eval')] + [
        'train.supervised_steps=3', f'train.self_train_steps={steps}', 'train.prior_frames=4',
        'train.ckpt_every=1', 'train.monitor_frames=0', *extra]


def _stop_at_call(trainer, n, terms):
    """Return ``terms`` that signals ``trainer()`` to stop at its ``n``-th call."""
    calls = []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            trainer().stop_signal = signal.SIGTERM
        return terms(*args, **kwargs)
    return stopping


def _export(summary):
    net = load_depth_seg_net(summary['export_dir'])[0]
    return {n: t.clone() for n, t in net.state_dict().items()}


def test_sim_only_self_trains_after_its_supervised_steps_and_resumes(
        tiny_data, tmp_path, monkeypatch):
    calls = []
    original = losses.self_train_terms

    def counting(*args, **kwargs):
        calls.append(args[2]['labels'])
        return original(*args, **kwargs)
    monkeypatch.setattr(losses, 'self_train_terms', counting)
    trainer = train.Trainer(load_config('test', _sets(tiny_data)), tmp_path / 'a', 'sim_only')
    whole = trainer.run('all')
    trainer.close()
    assert whole['steps'] == {'supervised': 3, 'self_train': 3} and len(calls) == 3
    saved = np.load(tmp_path / 'a' / st.LABELS_FILE, allow_pickle=False)
    assert saved['labels'].shape[0] == 6   # the real train split: 2 sequences x 3 frames
    assert ((saved['labels'] != 255).mean()) > 0.4   # about half of each class, or more
    assert all(((b == 255) | (b < 12)).all() for b in calls)
    with open(tmp_path / 'a' / 'logs' / 'self_train.csv') as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 and all(math.isfinite(float(r['self_train_ce'])) for r in rows)
    assert float(rows[0]['lr']) == pytest.approx(1e-3)   # a new cycle from self_train_lr
    supervised = train.Trainer(load_config('test', _sets(tiny_data, 0)), tmp_path / 'c',
                               'sim_only')
    plain = _export(supervised.run('all'))
    supervised.close()
    exported = _export(whole)
    assert any(not torch.equal(plain[k], exported[k]) for k in plain)   # the stage trained

    # Stopped after the first self-training step, resumed: the same labels, the same export.
    first = train.Trainer(load_config('test', _sets(tiny_data)), tmp_path / 'b', 'sim_only')

    monkeypatch.setattr(losses, 'self_train_terms', _stop_at_call(lambda: first, 1, original))
    with pytest.raises(SystemExit):
        first.run('all')
    first.close()
    monkeypatch.setattr(losses, 'self_train_terms', original)
    resumed = train.Trainer(load_config('test', _sets(tiny_data)), tmp_path / 'b', 'sim_only',
                            resume=True)
    again = resumed.run('all')
    resumed.close()
    assert np.array_equal(np.load(tmp_path / 'b' / st.LABELS_FILE)['labels'], saved['labels'])
    for name, value in _export(again).items():
        torch.testing.assert_close(value, exported[name], atol=1e-5, rtol=1e-4)

    # The export is the deployed network as ever: ONNX with parity.
    onnx = export_onnx(whole['export_dir'])
    max_err, same = parity_check(whole['export_dir'], onnx)
    assert max_err < 1e-2 and same > 0.97


def test_self_training_without_sim_frames_reads_only_the_labelled_real_ones(
        tiny_data, tmp_path, monkeypatch):
    seen = []
    original = losses.self_train_terms

    def recording(net, sim, real, *args, **kwargs):
        seen.append((sim, real['labels'].shape[0]))
        return original(net, sim, real, *args, **kwargs)
    monkeypatch.setattr(losses, 'self_train_terms', recording)
    sets = _sets(tiny_data, extra=['train.self_train_sim=false', 'train.self_train_batch=2'])
    trainer = train.Trainer(load_config('test', sets), tmp_path, 'sim_only')
    before = {}

    def keep_supervised(*args, **kwargs):
        if not before:   # the network as the supervised stage left it
            before.update({k: v.clone() for k, v in trainer.net.state_dict().items()})
        return recording(*args, **kwargs)
    monkeypatch.setattr(losses, 'self_train_terms', keep_supervised)
    summary = trainer.run('all')
    trainer.close()
    assert summary['steps'] == {'supervised': 3, 'self_train': 3}
    assert seen == [(None, 2)] * 3   # no sim batch, two labelled real frames a step
    with open(tmp_path / 'logs' / 'self_train.csv') as fh:
        header = next(csv.reader(fh))
    assert header[-1] == 'self_train_ce' and 'depth' not in header and 'ce' not in header
    after = trainer.net.state_dict()
    # Only the label path learns: the depth decoder has no target without sim frames.
    depth_keys = [k for k in after if k.startswith('dec_depth.')]
    seg_keys = [k for k in after if k.startswith('dec_seg.') and after[k].is_floating_point()]
    assert depth_keys and all(torch.equal(before[k], after[k]) for k in depth_keys)
    assert any(not torch.equal(before[k], after[k]) for k in seg_keys)


def test_second_round_labels_with_the_network_the_first_round_left_and_resumes(
        tiny_data, tmp_path, monkeypatch):
    sets = _sets(tiny_data, steps=5, extra=['train.self_train_rounds=2',
                                            'train.self_train_sim=false',
                                            'train.self_train_batch=2'])
    labelled = []
    original = st.predict_labels

    def recording(net, *args, **kwargs):
        labelled.append({k: v.clone() for k, v in net.state_dict().items()})
        return original(net, *args, **kwargs)
    monkeypatch.setattr(st, 'predict_labels', recording)
    trainer = train.Trainer(load_config('test', sets), tmp_path / 'a', 'sim_only')
    whole = trainer.run('all')
    trainer.close()
    assert whole['stages'] == ['supervised', 'self_train', 'self_train_2']
    assert whole['steps'] == {'supervised': 3, 'self_train': 2, 'self_train_2': 3}
    assert len(labelled) == 2
    # Round 2 labels with round 1's last weights, which differ from the supervised ones.
    ckpt = tmp_path / 'a' / 'checkpoints'
    round1 = train.Trainer(load_config('test', sets), tmp_path / 'a', 'sim_only')
    from training.checkpoint import load_checkpoint
    load_checkpoint(ckpt, 'self_train_last', round1.net)
    for name, value in round1.net.state_dict().items():
        assert torch.equal(labelled[1][name], value), name
    assert any(not torch.equal(labelled[0][k], labelled[1][k]) for k in labelled[0])
    round1.close()
    for rnd in (1, 2):
        assert (tmp_path / 'a' / st.labels_file(rnd)).is_file()
    with open(tmp_path / 'a' / 'logs' / 'self_train_2.csv') as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]['lr']) == pytest.approx(1e-3)   # each round its own cycle

    # Stopped in round 2, resumed: round 2's labels are read back, the export is the same.
    first = train.Trainer(load_config('test', sets), tmp_path / 'b', 'sim_only')
    original_terms = losses.self_train_terms
    monkeypatch.setattr(losses, 'self_train_terms',   # the first step of round 2
                        _stop_at_call(lambda: first, 3, original_terms))
    with pytest.raises(SystemExit):
        first.run('all')
    first.close()
    monkeypatch.setattr(losses, 'self_train_terms', original_terms)
    labelled.clear()
    resumed = train.Trainer(load_config('test', sets), tmp_path / 'b', 'sim_only', resume=True)
    again = resumed.run('all')
    resumed.close()
    assert labelled == []   # both rounds' labels read back, none made again
    exported = _export(whole)
    for name, value in _export(again).items():
        torch.testing.assert_close(value, exported[name], atol=1e-5, rtol=1e-4)


def test_self_training_is_sim_only_and_checked_at_start_up(tiny_data, tmp_path):
    for method in ('oracle', 'twin_vae'):
        assert train.main(['--config', 'test', '--run-dir', str(tmp_path / method),
                           '--method', method, '--set', *_sets(tiny_data)]) == 2
    for bad in (['train.self_train_steps=-1'], ['train.self_train_lr=0'],
                ['train.weight_average=0.5'], ['train.self_train_rounds=0'],
                ['train.self_train_rounds=4']):
        assert train.main(['--config', 'test', '--run-dir', str(tmp_path / 'bad'), '--method',
                           'sim_only', '--set', *_sets(tiny_data, extra=bad)]) == 2


def test_compare_counts_the_real_frames_of_a_self_training_sim_only_run():
    def request(steps, real_root='r'):
        cfg = json.loads(json.dumps(load_config('test', [f'train.self_train_steps={steps}'])))
        cfg['data']['real']['root'] = real_root
        return {'method': 'sim_only', 'seed': 0, 'config': cfg}
    plain = compare.relevant_request(request(0))
    assert 'real' not in plain['config']['data']
    assert 'self_train_lr' not in plain['config']['train']
    kept = compare.relevant_request(request(5))
    assert kept['config']['data']['real']['root'] == 'r'
    assert kept['config']['loss']['pseudo_threshold'] == 0.9
    assert compare._differences(kept, compare.relevant_request(request(5, 'other')))
    assert not compare._differences(plain, compare.relevant_request(request(0, 'other')))

# Copyright 2026 sim2real_perception maintainers
# Licensed under the Apache License, Version 2.0
"""The EMA teacher of self-training (``loss.pseudo_teacher_ema``): update, targets, resume."""
import signal

import pytest
import torch

from sim2real_perception.config import load_config
from sim2real_perception.model import ModelConfig, TwinVAE
from sim2real_perception.model_io import load_depth_seg_net
from training import losses
from training.checkpoint import load_checkpoint
from training.teacher import attach_teacher, EmaTeacher

PSEUDO_ON = {'s2_pseudo_ce': 1.0, 's2_pseudo_depth': 1.0}


def small_cfg():
    base = load_config('test')['model']
    return ModelConfig.from_dict({**base, 'skips': 'shared', 'shared_layers': 8})


def test_ema_update_by_hand():
    torch.manual_seed(0)
    net = TwinVAE(small_cfg())
    net.add_module('critic', torch.nn.Linear(2, 2))
    teacher = EmaTeacher(net, 0.75)
    assert not hasattr(teacher.net, 'critic') and hasattr(net, 'critic')   # left out, kept
    assert not any(p.requires_grad for p in teacher.net.parameters())
    start = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        bn.running_mean.fill_(3.0)
    teacher.update(net)
    student = net.state_dict()
    for name, p in teacher.net.named_parameters():   # t + 0.25 (s - t), s = t + 1
        assert torch.allclose(p, start[name] + 0.25, atol=1e-6), name
        assert not torch.allclose(p, student[name])
    for name, b in teacher.net.named_buffers():      # buffers are the student's
        assert torch.equal(b, student[name]), name
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match='pseudo_teacher_ema'):
            EmaTeacher(net, bad)


def test_attach_teacher_only_for_self_training():
    net = TwinVAE(small_cfg())
    assert attach_teacher(net, {'pseudo_teacher_ema': 0.0, **PSEUDO_ON}) is None
    assert attach_teacher(net, {'pseudo_teacher_ema': 0.9}) is None   # no self-training
    assert not hasattr(net, 'teacher')
    teacher = attach_teacher(net, {'pseudo_teacher_ema': 0.9, **PSEUDO_ON})
    assert net.teacher is teacher and teacher.decay == 0.9
    assert attach_teacher(net, {'pseudo_teacher_ema': 0.9, **PSEUDO_ON}) is teacher   # once
    assert not hasattr(teacher.net, 'teacher')


def test_pseudo_targets_come_from_the_teacher():
    cfg = small_cfg()
    torch.manual_seed(0)
    net = TwinVAE(cfg).eval()          # eval: z = mu and no RNG draws but the strong view's
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    mu, _, feats = net.encode_skips(x, 'real')
    torch.manual_seed(5)
    own = losses.pseudo_terms(net, x, mu, feats, threshold=0.0)
    same = EmaTeacher(net, 0.5).net.eval()
    torch.manual_seed(5)
    copied = losses.pseudo_terms(net, x, mu, feats, threshold=0.0, teacher=same)
    for a, b in zip(own, copied):      # a teacher equal to the student: the same targets
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
    sure = EmaTeacher(net, 0.5).net.eval()
    with torch.no_grad():              # a teacher sure of class 3 everywhere, depth 0
        sure.dec_seg.layers[-1][0].bias.zero_()
        sure.dec_seg.layers[-1][0].weight.zero_()
        sure.dec_seg.layers[-1][0].bias[3] = 50.0
    torch.manual_seed(5)
    view = losses.strong_view(x)
    torch.manual_seed(5)
    ce, _ = losses.pseudo_terms(net, x, mu, feats, threshold=0.9, labels=True, depth=False,
                                teacher=sure)
    _, z_a, f_a = net.encode_skips(view, 'real')
    logits = net.decode(z_a, 'seg', f_a)
    want = torch.nn.functional.cross_entropy(logits, torch.full_like(logits[:, 0], 3).long())
    assert ce.item() == pytest.approx(want.item(), rel=1e-4)
    # The student's own labels are mostly other classes, so its targets would score otherwise
    # (by 0.4 % here, 40x the tolerance above).
    assert float((net.decode(mu, 'seg', feats).argmax(1) != 3).float().mean()) > 0.5
    assert abs(own[0].item() - want.item()) > 1e-3 * want.item()


def teacher_cfg(data, **extra):
    sets = [f'data.{k}.root={data}' for k in ('sim', 'real', 'eval')] + [
        'data.eval.val_fraction=0.25', 'train.stage1_steps=1', 'train.stage2_steps=4',
        'train.ckpt_every=1', 'model.skips=shared', 'model.shared_layers=8',
        'train.stage2_lean=true', 'train.stage2_real_input=sim', 'loss.s2_pseudo_ce=1.0',
        'loss.s2_pseudo_depth=1.0', 'loss.pseudo_threshold=0.0',
        'loss.pseudo_teacher_ema=0.5'] + [f'{k}={v}' for k, v in extra.items()]
    return load_config('test', sets)


def stage2_state(run_dir, cfg):
    net = TwinVAE(cfg['model'])
    attach_teacher(net, cfg['loss'])
    load_checkpoint(run_dir / 'checkpoints', 'stage2_last', net)
    return net


def test_training_keeps_resumes_and_does_not_export_the_teacher(
        tiny_data, tmp_path, monkeypatch):
    from training import train
    cfg = teacher_cfg(tiny_data)
    ref = tmp_path / 'ref'
    summary = train.run(cfg, ref)
    net = stage2_state(ref, cfg)
    start = TwinVAE(cfg['model'])
    load_checkpoint(ref / 'checkpoints', 'stage1_last', start)
    for name in ('enc_real.layers.1.conv3d.weight', 'dec_seg.layers.8.0.weight'):
        t, s = net.teacher.net.state_dict()[name], net.state_dict()[name]
        s0 = start.state_dict()[name]
        assert not torch.allclose(t, s) and not torch.allclose(t, s0)   # between the two
    exported, _ = load_depth_seg_net(summary['export_dir'])   # strict load: no teacher keys
    assert exported is not None

    # Stop after stage-2 step 2 as a SIGTERM would, resume: the same teacher as in one go.
    real_curve = train.Trainer._monitor_curve

    def stop_at_two(self, stage, step, total):
        if stage == 'stage2' and step == 2:
            self.stop_signal = signal.SIGTERM
        return real_curve(self, stage, step, total)

    run = tmp_path / 'run'
    monkeypatch.setattr(train.Trainer, '_monitor_curve', stop_at_two)
    with pytest.raises(SystemExit):
        train.run(cfg, run)
    monkeypatch.setattr(train.Trainer, '_monitor_curve', real_curve)
    train.run(cfg, run, resume=True)
    resumed = stage2_state(run, cfg)
    want = net.teacher.net.state_dict()
    for name, value in resumed.teacher.net.state_dict().items():
        assert torch.allclose(value.float(), want[name].float(), atol=1e-6), name

"""Train the twin-VAE (stage 1), its depth/segmentation heads (stage 2), or a baseline.

``python -m training.train --config cpu`` runs both stages of the paper on the configured
data and exports ``RUN/export`` (loadable with ``sim2real_perception.model_io``).
``--method sim_only`` / ``oracle`` train the same real encoder + heads supervised on sim
frames / on the real split's labels: the baselines of the paper's Table 1.

Resumable to the step: data order is a function of (seed, step) (``train_data``), the
checkpoint holds weights, optimizer and RNG states, and SIGINT/SIGTERM save before exit.
Under ``torchrun`` it trains with DistributedDataParallel (gloo on CPU, NCCL on CUDA).
"""
import argparse
import gc
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sim2real_perception.config import load_config
from sim2real_perception.labels import CLASS_NAMES
from sim2real_perception.model import DepthSegNet, ModelConfig, TwinVAE
from sim2real_perception.model_io import export_model_dir, torch_device

from . import losses
from .checkpoint import (CheckpointError, load_checkpoint, read_record, rng_state,
                         save_checkpoint, set_rng_state)
from .teacher import attach_teacher
from .weight_average import attach_average, average_start
from .train_data import epoch_order, step_loader, steps_per_epoch
from .train_logging import CsvLog, grid_tensor, sample_grid, tensorboard_writer, write_grid

METHODS = ('twin_vae', 'sim_only', 'oracle', 'mean_prior')
STAGES = ('1', '2', 'all')
#: Data streams (seeds of their shuffles) so each has its own independent order.
STREAM_SIM, STREAM_REAL, STREAM_EVAL, STREAM_PSEUDO = 1, 2, 3, 4
EXIT_NONFINITE = 3


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN/inf; the message names it and the last good checkpoint."""


class StageLoss(nn.Module):
    """One stage's forward pass returning its loss terms (what DDP wraps)."""

    def __init__(self, net, stage, model_cfg, loss_cfg, real_input='translated', lean=False,
                 ce_weight=None, style_mixer=None, paste=(), sim_terms=True, depth_weight=None):
        super().__init__()
        #: the self-training stage's pasted sim class ids or ``losses.CLASSMIX``
        #: (``self_train_paste``, the ``train.self_train_paste`` setting) and
        #: whether its sim frames are also supervised (``train.self_train_sim``)
        self.paste, self.sim_terms = paste, bool(sim_terms)
        self.paste_depth = paste_depth(loss_cfg)   # loss.self_train_depth > 0
        #: ``training.style_mix.StyleMixer`` of a sim_only run with ``train.style_mix``, or None
        self.style_mixer = style_mixer
        #: per-class cross-entropy weights (``loss.ce_class_balance``), or None
        self.register_buffer('ce_weight', ce_weight, persistent=False)
        #: per-class depth weights of the supervised stage (``loss.depth_class_balance``)
        self.register_buffer('depth_weight', depth_weight, persistent=False)
        self.net, self.stage, self.model_cfg = net, stage, model_cfg
        self.gamma = float(loss_cfg['mmd_gamma_scale'])
        self.mmd_on = str(loss_cfg['mmd_on'])
        self.sky_as_far = bool(loss_cfg['sky_as_far'])
        self.depth_norm = str(loss_cfg['depth_norm'])
        self.heads_on = str(loss_cfg.get('heads_on', 'z'))
        if self.heads_on not in losses.HEADS_ON:
            raise ValueError(f'loss.heads_on={self.heads_on!r} not in {losses.HEADS_ON}')
        self.real_input = str(real_input)
        self.lean = bool(lean)
        self.source_only = False   # set per step by the trainer (train.stage2_source_steps)
        self.sim_encoder = needs_sim_encoder(loss_cfg, real_input, lean)
        self.strength = float(loss_cfg['pseudo_strength'])   # the self_train stage's view
        on = {k: float(loss_cfg.get(f's2_pseudo_{k}', 0.0)) > 0 for k in ('ce', 'depth')}
        self.pseudo = {'threshold': float(loss_cfg['pseudo_threshold']),
                       'strength': float(loss_cfg['pseudo_strength']),
                       'labels': on['ce'], 'depth': on['depth'],
                       'mix': str(loss_cfg['pseudo_mix']),
                       'teacher': getattr(getattr(net, 'teacher', None), 'net', None)} \
            if any(on.values()) else None

    def forward(self, first, second=None):
        if self.stage == 'stage1':
            return losses.stage1_terms(self.net, first['image'], second['image'], self.gamma,
                                       self.mmd_on)
        if self.stage == 'stage2':
            return losses.stage2_terms(self.net, first, second['image'], self.model_cfg,
                                       self.gamma, self.mmd_on, self.sky_as_far,
                                       self.real_input, self.lean, self.pseudo,
                                       self.depth_norm, self.sim_encoder, self.source_only,
                                       self.ce_weight, self.heads_on)
        if is_self_train(self.stage):   # (sim, real) or, without sim frames, (real,)
            sim, real = (first, second) if second is not None else (None, first)
            return losses.self_train_terms(self.net, sim, real, self.model_cfg,
                                           self.sky_as_far, self.depth_norm, self.strength,
                                           self.paste, self.sim_terms, self.paste_depth)
        if self.style_mixer is not None:
            self.style_mixer.prepare(second['image'], first['image'].shape[0])
        try:
            return losses.supervised_terms(self.net, first, self.model_cfg, self.sky_as_far,
                                           self.depth_norm, self.ce_weight, self.depth_weight)
        finally:
            if self.style_mixer is not None:
                self.style_mixer.clear()


def needs_sim_encoder(loss_cfg, real_input, lean):
    """Return whether stage 2 runs E_S.

    A lean stage 2 on the sim frames reads it only in eqs 12-13, so with both at weight 0 it
    is skipped (and its stem not trained).
    """
    unused = all(float(loss_cfg.get(k, 0.0)) == 0.0 for k in ('s2_kl_sim', 's2_mmd_s2r'))
    return not (bool(lean) and str(real_input) == 'sim' and unused)


def build_net(model_cfg, loss_cfg, method='twin_vae'):
    """Return the network a method trains: the twin VAE, with the feature critic if weighed."""
    net = TwinVAE(model_cfg)
    if method == 'twin_vae' and float(loss_cfg.get('s2_adv', 0.0)) > 0:
        from .critic import critic_channels, FeatureCritic
        net.add_module('critic', FeatureCritic(critic_channels(model_cfg)))
    return net


def trainable_modules(net, stage, train_cfg, loss_cfg):
    """Return the modules a stage optimises (the shared layers belong to both encoders)."""
    if stage == 'stage1':
        return [net.enc_real, net.enc_sim, net.dec_real, net.dec_sim]
    if stage == 'stage2':
        mods = [net.dec_depth, net.dec_seg]
        if getattr(net, 'critic', None) is not None:
            mods.append(net.critic)
        if not train_cfg['stage2_freeze_encoders']:
            mods.append(net.enc_real)
            if needs_sim_encoder(loss_cfg, train_cfg['stage2_real_input'],
                                 train_cfg['stage2_lean']):
                mods.append(net.enc_sim)
        return mods
    return [net.enc_real, net.dec_depth, net.dec_seg]


def set_trainable(net, stage, train_cfg, loss_cfg):
    """Let only ``trainable_modules`` take gradients; return their parameters, each once."""
    for p in net.parameters():
        p.requires_grad_(False)
    for m in trainable_modules(net, stage, train_cfg, loss_cfg):
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for p in net.parameters() if p.requires_grad]   # shared layers once


def is_self_train(stage):
    """Whether ``stage`` is a self-training round: ``self_train``, ``self_train_2``, ..."""
    return stage == 'self_train' or stage.startswith('self_train_')


def self_train_rounds(train_cfg):
    """Stage names of sim_only's self-training rounds (``train.self_train_rounds``)."""
    rounds = int(train_cfg.get('self_train_rounds', 1))
    return ['self_train'] + [f'self_train_{r}' for r in range(2, rounds + 1)]


def self_train_paste(train_cfg):
    """Class ids of ``train.self_train_paste`` (or ``losses.CLASSMIX``): what is pasted."""
    names = train_cfg.get('self_train_paste') or []
    if names == losses.CLASSMIX:
        return losses.CLASSMIX
    if isinstance(names, str):
        names = [names]
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise ValueError(f'train.self_train_paste: unknown class(es) {unknown}; the classes '
                         f'are {list(CLASS_NAMES)}')
    return tuple(CLASS_NAMES.index(n) for n in names)


def paste_depth(loss_cfg):
    """Whether self-training also teaches depth on its pasted sim objects."""
    return float(loss_cfg.get('self_train_depth', 0.0)) > 0


def stage_weights(stage, loss_cfg, train_cfg):
    """Return the ``loss.*`` weight of each of a stage's terms, in the documented order."""
    key = 'self_train' if is_self_train(stage) else stage
    names = {'stage1': losses.STAGE1_TERMS, 'stage2': losses.STAGE2_TERMS,
             'supervised': losses.SUPERVISED_TERMS, 'self_train': losses.SELF_TRAIN_TERMS}[key]
    if is_self_train(stage) and not train_cfg['self_train_sim']:   # no sim batch: no sim terms
        names = [k for k in names if k not in losses.SUPERVISED_TERMS]
    if not paste_depth(loss_cfg):
        names = [k for k in names if k != 'self_train_depth']
    return {k: float(loss_cfg[k]) for k in names}


def stage_plan(method, stage):
    """Names of the stages to run for ``method`` and ``--stage``."""
    if method not in METHODS:
        raise ValueError(f'method {method!r} not in {METHODS}')
    if stage not in STAGES:
        raise ValueError(f'stage {stage!r} not in {STAGES}')
    if method == 'mean_prior':
        return ['prior']
    if method != 'twin_vae':
        if stage != 'all':
            raise ValueError(f'--stage {stage} is for twin_vae; {method} has one stage (all)')
        return ['supervised']
    return {'1': ['stage1'], '2': ['stage2'], 'all': ['stage1', 'stage2']}[stage]


def lr_at(train_cfg, step, total):
    """Learning rate of step ``step`` (0-based) of ``total``: constant (paper) or cosine."""
    base = float(train_cfg['lr'])
    schedule = str(train_cfg.get('lr_schedule', 'constant'))
    if schedule == 'constant':
        return base
    if schedule == 'cosine':
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    raise ValueError(f'train.lr_schedule={schedule!r}: constant | cosine')


def check_train_config(t):
    """Refuse ``train`` values no run can use, naming the key, before any work starts."""
    minimum = {'batch_size': 1, 'num_workers': 0, 'stage1_steps': 0, 'stage2_steps': 0,
               'supervised_steps': 0}
    for key, low in minimum.items():
        if key in t and int(t[key]) < low:
            raise ValueError(f'train.{key}={t[key]!r}: must be >= {low}')
    if not float(t['lr']) > 0:
        raise ValueError(f'train.lr={t["lr"]!r}: must be > 0')
    if not 0.0 <= float(t.get('style_mix', 0.0)) <= 1.0:
        raise ValueError(f'train.style_mix={t["style_mix"]!r}: a probability in [0, 1]')
    if not 0.0 <= float(t.get('weight_average', 0.0)) < 1.0:
        raise ValueError(f'train.weight_average={t["weight_average"]!r}: a share of the '
                         'steps in [0, 1)')
    if int(t.get('self_train_steps', 0)) < 0 or int(t.get('self_train_batch', 0)) < 0 or \
            not float(t.get('self_train_lr', 1.0)) > 0:
        raise ValueError('train.self_train_steps and train.self_train_batch must be >= 0, '
                         'train.self_train_lr > 0')
    rounds = int(t.get('self_train_rounds', 1))
    if rounds < 1 or (int(t.get('self_train_steps', 0)) and
                      rounds > int(t.get('self_train_steps', 0))):
        raise ValueError(f'train.self_train_rounds={rounds}: at least 1 and at most '
                         'train.self_train_steps')
    self_train_paste(t)
    if int(t.get('self_train_steps', 0)) and float(t.get('weight_average', 0.0)):
        raise ValueError('train.weight_average and train.self_train_steps: average one stage '
                         'or self-train after it, not both')


def _seed_key(*parts):
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _to(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


class Trainer:
    """Runs the stages of one method in one run directory (see ``run``)."""

    def __init__(self, cfg, run_dir, method='twin_vae', resume=False):
        self.cfg, self.method, self.resume = cfg, method, bool(resume)
        self.t, self.loss_cfg = cfg['train'], cfg['loss']
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / 'checkpoints'
        self.seed = int(self.t['seed'])
        check_train_config(self.t)
        if paste_depth(self.loss_cfg) and not self_train_paste(self.t):
            raise ValueError('loss.self_train_depth > 0 teaches depth on pasted sim objects: '
                             'it needs train.self_train_paste')
        if self._style_mix() > 0 and method != 'sim_only':
            raise ValueError(f'train.style_mix is for --method sim_only (got {method}): it '
                             'mixes real frame statistics into the sim frames of that baseline')
        if self._self_train_steps() and method != 'sim_only':
            raise ValueError(f'train.self_train_steps is for --method sim_only (got {method}); '
                             'the twin-VAE self-trains in stage 2 (loss.s2_pseudo_ce)')
        self._init_distributed()
        if self.t['deterministic']:
            os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        self.model_cfg = ModelConfig.from_dict(cfg['model'])
        torch.manual_seed(self.seed)
        self.net = build_net(self.model_cfg, self.loss_cfg, method).to(self.device)
        self.use_bf16 = bool(self.t['bf16']) and self.device.type == 'cuda'
        self.stop_signal = None
        self.last_good = None
        self.steps = {}
        self.monitor = {}
        self._datasets = {}
        self._monitor_items = None   # the monitor's frames, read once (_monitor_frames)
        self._class_counts = {}      # dataset name -> label pixel counts (class_weights)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    # --- setup -----------------------------------------------------------------------------
    def _init_distributed(self):
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        device = torch_device(str(self.t['device']))
        if device.type == 'cuda' and self.world > 1:
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        self.is_main = self.rank == 0

    def dataset(self, name):
        """Build (once) a dataset: sim, sim_self_train, real, real_plain, eval_train, eval_val."""
        if name not in self._datasets:
            from .data import build_dataset
            h, w = self.model_cfg.height, self.model_cfg.width
            data = self.cfg['data']
            if name == 'sim':
                ds = build_dataset(data['sim'], 'train', h, w, True, self.seed)
            elif name == 'sim_self_train':   # other augmentation draws than stage 1's epochs
                ds = build_dataset(data['sim'], 'train', h, w, True, self.seed + 7919)
            elif name in ('real', 'real_plain'):   # images only: no run reads real labels
                real = {**data['real'], 'with_depth': False, 'with_labels': False}
                # real_plain: unaugmented, the frames the self_train stage labels
                ds = build_dataset(real, 'train', h, w, name == 'real', self.seed)
            elif name == 'eval_train':
                ds = build_dataset(data['eval'], 'train', h, w, True, self.seed)
            else:
                ds = build_dataset(data['eval'], 'val', h, w, False, self.seed)
            self._datasets[name] = ds
        return self._datasets[name]

    def _streams(self, stage):
        """(dataset name, stream id) of the batches a stage step consumes."""
        if stage == 'stage1':
            return [('real', STREAM_REAL), ('sim', STREAM_SIM)]
        if stage == 'stage2':
            return [('sim', STREAM_SIM), ('real', STREAM_REAL)]
        if is_self_train(stage):
            with_sim = self.t['self_train_sim'] or self_train_paste(self.t)
            return ([('sim_self_train', STREAM_SIM)] if with_sim else []) + \
                [('pseudo', STREAM_PSEUDO)]
        if self.method == 'sim_only':   # real frames only lend their feature statistics
            return [('sim', STREAM_SIM)] + ([('real', STREAM_REAL)] if self._style_mix() else [])
        return [('eval_train', STREAM_EVAL)]

    def _style_mix(self):
        """Return ``train.style_mix``: the share of sim frames given real feature statistics."""
        return float(self.t.get('style_mix', 0.0))

    def _self_train_steps(self):
        """Return ``train.self_train_steps``: sim_only's self-training stage (0 = none)."""
        return int(self.t.get('self_train_steps', 0))

    def _round_steps(self, stage):
        """Return one self-training round's steps: an even split, the remainder to the last."""
        rounds = self_train_rounds(self.t)
        each = self._self_train_steps() // len(rounds)
        last = self._self_train_steps() - each * (len(rounds) - 1)
        return last if stage == rounds[-1] else each

    def _lr_config(self, stage):
        """Return the train section whose ``lr`` a stage's schedule starts from."""
        if is_self_train(stage):
            return {**self.t, 'lr': float(self.t['self_train_lr'])}
        return self.t

    def _batch(self, stage):
        """Frames per stream per step: ``train.self_train_batch`` in that stage, if set."""
        if is_self_train(stage) and int(self.t.get('self_train_batch', 0)) > 0:
            return int(self.t['self_train_batch'])
        return int(self.t['batch_size'])

    def _schedule(self, stage, sizes):
        spe = steps_per_epoch(max(sizes), self._batch(stage), self.world)
        steps = self._round_steps(stage) if is_self_train(stage) else \
            int(self.t[f'{stage}_steps'])   # self_train runs only when its steps are > 0
        total = steps if steps > 0 else int(math.ceil(float(self.t[f'{stage}_epochs']) * spe))
        return spe, max(1, total)

    # --- checkpoints -----------------------------------------------------------------------
    def _record(self, stage, step, epoch, spe, total, complete, extra):
        return {'method': self.method, 'stage': stage, 'step': step, 'epoch': epoch,
                'steps_per_epoch': spe, 'total_steps': total, 'complete': complete,
                'seed': self.seed, 'world_size': self.world, 'config': self.cfg,
                'rng': rng_state(), **extra}

    def _save(self, tag, stage, opt, step, epoch, spe, total, complete=False, extra=None):
        if not self.is_main:
            return None
        path = save_checkpoint(self.ckpt_dir, tag, self.net, opt,
                               self._record(stage, step, epoch, spe, total, complete,
                                            extra or {}))
        if tag.endswith('_last'):
            self.last_good = path
        return path

    # --- one stage -------------------------------------------------------------------------
    def train_stage(self, stage, stage_index):
        """Train (or resume, or skip when complete) one stage; return its last record."""
        tag = f'{stage}_last'
        if is_self_train(stage):
            self.prepare_pseudo_labels(stage)
        params = set_trainable(self.net, stage, self.t, self.loss_cfg)
        betas = tuple(float(b) for b in self.t['betas'])
        opt = torch.optim.Adam(params, lr=float(self.t['lr']), betas=betas,
                               weight_decay=float(self.t['weight_decay']))
        streams = self._streams(stage)
        datasets = [self.dataset(name) for name, _ in streams]
        sizes = [len(d) for d in datasets]
        # A baseline's epochs are those of its labelled frames (style mixing adds real ones).
        labelled_only = stage == 'supervised' or is_self_train(stage)
        spe, total = self._schedule(stage, sizes[:1] if labelled_only else sizes)
        start, extra = 0, {'epoch_loss': [0.0, 0], 'best_loss': None}
        record = read_record(self.ckpt_dir, tag) if self.resume else None
        if record is not None and stage == 'stage2':
            attach_teacher(self.net, self.loss_cfg)   # before its weights are loaded
        if record is not None and stage != 'stage1':
            attach_average(self.net, self.t)
        if record is not None and record.get('method') != self.method:
            raise CheckpointError(f'{self.ckpt_dir / tag}.json was written by method '
                                  f'{record.get("method")!r}, not {self.method!r}')
        if record is not None:
            load_checkpoint(self.ckpt_dir, tag, self.net, opt)
            self.last_good = self.ckpt_dir / f'{tag}.json'
            if record.get('complete'):
                self._log(f'[{stage}] complete in {self.last_good}; skipped')
                self.steps[stage] = record['step']
                return record
            set_rng_state(record['rng'])
            start = int(record['step'])
            extra = {'epoch_loss': record.get('epoch_loss', [0.0, 0]),
                     'best_loss': record.get('best_loss')}
            if int(record.get('total_steps', total)) != total:
                raise CheckpointError(f'{tag}: checkpoint schedule has {record["total_steps"]} '
                                      f'steps, this config {total}; resume needs the same one')
            self._log(f'[{stage}] resuming at step {start}/{total} from {self.last_good} '
                      f'({record["weights"]})')
        else:
            if stage == 'stage2' and stage_index == 0:
                done = read_record(self.ckpt_dir, 'stage1_last')
                if done is None or not done.get('complete'):
                    raise CheckpointError(f'--stage 2 needs a complete stage 1 in '
                                          f'{self.ckpt_dir} (run --stage 1 first)')
                load_checkpoint(self.ckpt_dir, 'stage1_last', self.net)
                self.last_good = self.ckpt_dir / 'stage1_last.json'
                self._log(f'[stage2] starting from {self.ckpt_dir / "stage1_last.json"}')
            if self.net.prior is not None and stage != 'stage1' and not is_self_train(stage):
                self.fit_head_prior(stage, streams[0][0])
            if stage == 'stage2':
                attach_teacher(self.net, self.loss_cfg)   # a copy of the start, prior fitted
            if stage != 'stage1':
                attach_average(self.net, self.t)
            torch.manual_seed(_seed_key(self.seed, 17, stage_index, self.rank))
        self.steps[stage] = total
        weights = stage_weights(stage, self.loss_cfg, self.t)
        ce_weight = self.class_weights(stage, streams[0][0]) \
            if stage in ('stage2', 'supervised') else None
        depth_weight = self.class_weights(stage, streams[0][0], 'depth_class_balance') \
            if stage == 'supervised' else None
        mixer = None
        if stage == 'supervised' and self._style_mix() > 0:
            from .style_mix import StyleMixer
            mixer = StyleMixer(self.net.enc_real, self.t['style_mix_layers'], self._style_mix(),
                               float(self.t['style_mix_alpha']))
        module = StageLoss(self.net, stage, self.model_cfg, self.loss_cfg,
                           self.t['stage2_real_input'], self.t['stage2_lean'], ce_weight, mixer,
                           self_train_paste(self.t), bool(self.t['self_train_sim']),
                           depth_weight)
        if self.world > 1:   # source-only steps leave E_S and the critic without gradients
            module = DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == 'cuda' else None,
                find_unused_parameters=stage == 'stage2' and self._source_steps() > 0)
        loaders = [step_loader(ds, self._batch(stage), self.world, self.rank,
                               self.seed, sid, start, total, int(self.t['num_workers']))
                   for ds, (_, sid) in zip(datasets, streams)]
        try:
            return self._loop(stage, module, opt, loaders, weights, spe, start, total, extra)
        finally:
            if mixer is not None:
                mixer.remove()

    def prepare_pseudo_labels(self, stage='self_train'):
        """Label the real training frames for a self-training round (or read them back).

        A resumed run reads the round's ``RUN/self_train/pseudo_labels*.npz``; a fresh round
        labels the frames with the network as the stage before it left it.
        """
        from . import self_training as st
        frames = self.dataset('real_plain')
        names = [frames.source.samples[i].name for i in frames.indices]
        rnd = self_train_rounds(self.t).index(stage) + 1
        path = self.run_dir / st.labels_file(rnd)
        if self.resume and path.is_file():
            labels, thresholds = st.load_labels(path, names)
            self._log(f'[{stage}] labels of {len(labels)} real frames read from {path}')
        else:
            if self.resume and read_record(self.ckpt_dir, f'{stage}_last') is not None:
                raise CheckpointError(f'{self.ckpt_dir}/{stage}_last.json exists but {path} '
                                      'does not: the stage cannot resume on other labels')
            raw, conf = st.predict_labels(self.net, frames, int(self.t['batch_size']) * 2,
                                          self.device)
            thresholds = st.class_thresholds(raw, conf, self.model_cfg.num_classes,
                                             float(self.t['self_train_keep']),
                                             float(self.loss_cfg['pseudo_threshold']))
            labels = st.select(raw, conf, thresholds)
            if self.is_main:
                st.save_labels(path, labels, thresholds, names)
            self._log(f'[{stage}] labelled {len(labels)} real frames, kept '
                      f'{float(np.mean(labels != 255)):.1%} of the pixels; class thresholds '
                      + ' '.join(f'{t:.2f}' for t in thresholds))
        self._datasets['pseudo'] = st.PseudoLabelled(frames, labels,
                                                     self.seed + 1000 * (rnd - 1))

    @torch.no_grad()
    def fit_head_prior(self, stage, name):
        """Fit ``model.prior`` on the labelled frames the heads train on (``model.prior``).

        At most ``train.prior_frames`` frames, evenly spaced, without random flips or jitter.
        Resumed stages load the fitted maps from their checkpoint instead.
        """
        from .mean_prior import fit_residual_prior
        n, frames = self.prior_frames(name)
        depth_t, freq, ground_t = fit_residual_prior(frames, self.model_cfg)
        self.net.prior.set_maps(depth_t, freq, ground_t)
        self._log(f'[{stage}] model.prior fitted on {n} frames of {name}')

    def prior_frames(self, name):
        """Return (count, iterator) of the frames the prior and the class weights are fitted on.

        At most ``train.prior_frames`` frames of the dataset, evenly spaced, read one at a time
        without random flips or jitter, so a resumed run gets the same ones.
        """
        ds = self.dataset(name)
        limit = int(self.t['prior_frames'])
        idx = np.arange(len(ds)) if limit <= 0 or limit >= len(ds) else \
            np.linspace(0, len(ds) - 1, limit).round().astype(int)

        def frames():
            was_train, ds.train = ds.train, False
            try:
                for i in idx:
                    yield ds[int(i)]
            finally:
                ds.train = was_train
        return len(idx), frames()

    @torch.no_grad()
    def class_weights(self, stage, name, key='ce_class_balance'):
        """Return ``loss.<key>``'s per-class weights, or None at power 0.

        Counted on ``prior_frames``, so a resumed run recomputes the same weights.
        """
        power = float(self.loss_cfg.get(key, 0.0))
        if power == 0.0:
            return None
        if name not in self._class_counts:   # read once for the ce and the depth weights
            counts = torch.zeros(self.model_cfg.num_classes, dtype=torch.float64)
            for frame in self.prior_frames(name)[1]:
                labels = frame['labels'][frame['labels'] < len(counts)]
                counts += torch.bincount(labels, minlength=len(counts)).double()
            self._class_counts[name] = counts
        weights = losses.class_balance_weights(self._class_counts[name], power)
        self._log(f'[{stage}] loss.{key}={power:g}: class weights '
                  + ' '.join(f'{w:.2f}' for w in weights.tolist()))
        return weights.to(self.device)

    def _loop(self, stage, module, opt, loaders, weights, spe, start, total, extra):
        names = list(weights)
        batch = self._batch(stage)
        per_step = batch * self.world * len(loaders)
        log_every, ckpt_every = int(self.t['log_every']), int(self.t['ckpt_every'])
        clip = float(self.t['grad_clip'])
        csv_log = tb = None
        if self.is_main:
            csv_log = CsvLog(self.run_dir / 'logs' / f'{stage}.csv',
                             ['step', 'epoch', 'lr', 'images_per_s', 'total', *names],
                             truncate_after=start if start else None)
            tb = tensorboard_writer(self.run_dir / 'logs' / 'tb', purge_step=start or None)
        bar = tqdm(total=total, initial=start, desc=stage, unit='step', dynamic_ncols=True,
                   disable=not (self.is_main and self.t['progress']), file=sys.stderr)
        self.net.train()
        step, t_last, n_last = start, time.monotonic(), 0
        images = None
        teacher = getattr(self.net, 'teacher', None) if stage == 'stage2' else None
        autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.use_bf16) \
            if self.device.type == 'cuda' else torch.autocast('cpu', enabled=False)
        source_steps = self._source_steps() if stage == 'stage2' else 0
        lr_cfg = self._lr_config(stage)
        loss_module = getattr(module, 'module', module)   # under DDP, the wrapped StageLoss
        averaged = getattr(self.net, 'averaged', None) if stage != 'stage1' else None
        average_from = average_start(self.t, total)
        for batches in zip(*loaders):
            batches = [_to(b, self.device) for b in batches]
            loss_module.source_only = step < source_steps
            with autocast:
                terms, images = module(*batches)
            total_loss, weighted = losses.weighted_total(terms, weights)
            values = torch.stack([weighted[k].detach().float() for k in names])
            if self.world > 1:
                dist.all_reduce(values)
                values /= self.world
            values = values.cpu().tolist()
            for name, value in zip(names, values):
                if not math.isfinite(value):
                    raise NonFiniteLoss(
                        f'{stage} step {step}: loss term {name!r} is {value} (weight '
                        f'loss.{name}={weights[name]}); last good checkpoint: '
                        f'{self.last_good or "none"}')
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            for group in opt.param_groups:   # a function of the step: resume-exact
                group['lr'] = lr_at(lr_cfg, step, total)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups
                                                for p in g['params']], clip)
            opt.step()
            if teacher is not None:
                teacher.update(self.net)
            step += 1
            if averaged is not None and step > average_from:
                averaged.update(self.net)
            n_last += 1
            loss_sum = float(sum(values))
            extra['epoch_loss'] = [extra['epoch_loss'][0] + loss_sum, extra['epoch_loss'][1] + 1]
            epoch = (step - 1) // spe
            bar.update(1)
            if self.is_main and (step % log_every == 0 or step == total):
                dt = max(time.monotonic() - t_last, 1e-9)
                ips = per_step * n_last / dt
                t_last, n_last = time.monotonic(), 0
                row = {'step': step, 'epoch': epoch, 'lr': opt.param_groups[0]['lr'],
                       'images_per_s': round(ips, 2), 'total': loss_sum,
                       **dict(zip(names, values))}
                csv_log.write(row)
                if tb is not None:
                    tb.add_scalar(f'{stage}/total', loss_sum, step)
                    tb.add_scalar(f'{stage}/images_per_s', ips, step)
                    for name, value in zip(names, values):
                        tb.add_scalar(f'{stage}/{name}', value, step)
                bar.set_postfix(loss=f'{loss_sum:.4g}', img_s=f'{ips:.1f}')
            epoch_end = step % spe == 0 or step == total
            self._monitor_curve(stage, step, total)
            if epoch_end:
                self._end_epoch(stage, epoch, step, images, tb, extra, opt, spe, total)
            elif step % ckpt_every == 0:
                self._save(f'{stage}_last', stage, opt, step, epoch, spe, total, extra=extra)
            if self.stop_signal is not None:
                if not epoch_end and step % ckpt_every:
                    self._save(f'{stage}_last', stage, opt, step, epoch, spe, total,
                               extra=extra)
                bar.close()
                self._log(f'[{stage}] stopped by signal {self.stop_signal} at step {step}; '
                          f'resume with --resume ({self.last_good})')
                raise SystemExit(128 + self.stop_signal)
        bar.close()
        if self.world > 1:
            # DDP broadcasts rank 0's buffers (BatchNorm statistics) before every forward, so
            # they are the run's buffers; copy them once more after the last step's update.
            for buf in self.net.buffers():
                dist.broadcast(buf, 0)
            dist.barrier()
        if averaged is not None and averaged.copy_to(self.net):
            self._log(f'[{stage}] exporting the mean of the weights of steps '
                      f'{average_from + 1}-{total} (train.weight_average)')
        path = self._save(f'{stage}_last', stage, opt, step, (step - 1) // spe, spe, total,
                          complete=True, extra=extra)
        if tb is not None:
            tb.close()
        return {'step': step, 'checkpoint': str(path) if path else None}

    def _source_steps(self):
        """Return ``train.stage2_source_steps``: stage 2's first, sim-supervised-only steps."""
        n = int(self.t.get('stage2_source_steps', 0))
        if n < 0:
            raise ValueError(f'train.stage2_source_steps={n} must be >= 0')
        return n

    def _end_epoch(self, stage, epoch, step, images, tb, extra, opt, spe, total):
        loss_sum, count = extra['epoch_loss']
        mean = loss_sum / max(count, 1)
        extra['epoch_loss'] = [0.0, 0]
        metrics = self._monitor(stage) if stage != 'stage1' else {}
        self.monitor[stage] = {'epoch': epoch, 'train_loss': mean, **metrics}
        extra['metrics'] = self.monitor[stage]
        if self.is_main:
            if images is not None and int(self.t['sample_rows']) > 0:
                grid = sample_grid(images, self.model_cfg, int(self.t['sample_rows']))
                write_grid(self.run_dir / 'samples' / f'{stage}_epoch{epoch:04d}.png', grid)
                if tb is not None:
                    tb.add_image(f'{stage}/samples', grid_tensor(grid), step)
            if tb is not None:
                for k, v in metrics.items():
                    if isinstance(v, (int, float)) and v is not None:
                        tb.add_scalar(f'{stage}/monitor_{k}', v, step)
            if metrics:
                self._log(f'[{stage}] epoch {epoch} step {step}: train loss {mean:.4f}, '
                          + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
        best = extra.get('best_loss')
        # "best" is selected on the training loss of the stage, never on real labels.
        if best is None or mean < best:
            extra['best_loss'] = mean
            self._save(f'{stage}_best', stage, opt, step, epoch, spe, total, extra=extra)
        self._save(f'{stage}_last', stage, opt, step, epoch, spe, total, extra=extra)

    def _monitor_curve(self, stage, step, total):
        """Every ``train.monitor_every`` steps (and at the end) score the monitor frames."""
        every = int(self.t.get('monitor_every', 0))
        if every <= 0 or stage == 'stage1' or not self.is_main or \
                (step % every and step != total):
            return
        metrics = self._monitor(stage)
        if metrics:
            path = self.run_dir / 'logs' / 'monitor.csv'
            new = not path.is_file()
            with open(path, 'a', encoding='utf-8') as fh:
                if new:
                    fh.write('stage,step,abs_rel,miou\n')
                fh.write(f'{stage},{step},{metrics.get("abs_rel", "")},'
                         f'{metrics.get("miou", "")}\n')

    def _monitor_frames(self):
        """Return the monitor's eval-val frames, read once: [(uint8 HWC batch, item)].

        A learning curve scores them every ``train.monitor_every`` steps; reading and
        resizing them again each time cost about as much as the forward passes.
        """
        if self._monitor_items is None:
            ds = self.dataset('eval_val')
            self._monitor_items = []
            for i in epoch_order(len(ds), self.seed, 99, 0)[:int(self.t['monitor_frames'])]:
                item = ds[int(i)]
                u8 = ((item['image'] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
                self._monitor_items.append((u8.permute(1, 2, 0)[None], item))
        return self._monitor_items

    @torch.no_grad()
    def _monitor(self, stage):
        """Depth AbsRel / mIoU on a few eval-val frames (logged only; never selects)."""
        n = int(self.t['monitor_frames'])
        if n <= 0 or not self.is_main:
            return {}
        from .metrics import DepthMetrics, SegMetrics
        net = DepthSegNet.from_twin(self.net)
        was_training = self.net.training
        self.net.eval()
        dm, sm = DepthMetrics(max_depth=self.model_cfg.max_depth), \
            SegMetrics(self.model_cfg.num_classes)
        for u8, item in self._monitor_frames():
            depth, labels = net(u8.to(self.device))
            if item['has_depth']:
                dm.update(depth[0].float().cpu().numpy(), item['depth'][0].numpy())
            if item['has_labels']:
                sm.update(labels[0].cpu().numpy(), item['labels'].numpy())
        self.net.train(was_training)
        out = {}
        d, s = dm.compute(), sm.compute()
        if d.get('n_pixels'):
            out['abs_rel'] = d['abs_rel']
        if s.get('n_pixels'):
            out['miou'] = s['miou']
        return out

    # --- the whole run ---------------------------------------------------------------------
    def _log(self, text):
        if self.is_main:
            print(text, file=sys.stderr, flush=True)

    def _handle_signal(self, signum, frame):
        self.stop_signal = signum

    @torch.no_grad()
    def recalibrate_bn(self, batches):
        """Re-estimate BatchNorm statistics of the deployed path on real training images."""
        if batches <= 0:
            return 0
        net = DepthSegNet.from_twin(self.net)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        net.train()
        loader = step_loader(self.dataset('real'), int(self.t['batch_size']), 1, 0, self.seed,
                             STREAM_REAL + 100, 0, batches, int(self.t['num_workers']))
        n = 0
        for b in loader:
            net.heads(b['image'].to(self.device))
            n += 1
        for m, mom in zip(bns, saved):
            m.momentum = mom
        self.net.train()
        return n

    def run(self, stage='all'):
        """Train every stage of the plan, export ``RUN/export``; return a summary dict."""
        plan = stage_plan(self.method, stage)
        if self._self_train_steps() and plan == ['supervised']:
            plan = plan + self_train_rounds(self.t)
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread
                pass
        if plan == ['prior']:
            return self.fit_prior()
        try:
            for i, name in enumerate(plan):
                self.train_stage(name, i)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        summary = {'method': self.method, 'seed': self.seed, 'stages': plan,
                   'steps': self.steps, 'monitor': self.monitor, 'run_dir': str(self.run_dir)}
        if 'stage1' in plan and 'stage2' not in plan:
            summary['export_dir'] = None
            return summary
        n_bn = 0
        if self.method == 'twin_vae' or self.t['bn_recalibrate_baselines']:
            n_bn = self.recalibrate_bn(int(self.t['bn_recalibration_batches'])
                                       if self.is_main else 0)
        summary['bn_recalibration_batches'] = n_bn
        export = self.run_dir / 'export'
        if self.is_main:
            export_model_dir(self.net, export, metadata={
                'method': self.method, 'seed': self.seed, 'steps': self.steps,
                'bn_recalibration_batches': n_bn, 'config': self.cfg})
            (self.run_dir / 'summary.json').write_text(json.dumps(summary | {
                'export_dir': str(export)}, indent=1))
        if self.world > 1:
            dist.barrier()
        summary['export_dir'] = str(export)
        return summary

    def fit_prior(self):
        """Fit the ``mean_prior`` floor: no training, per-pixel statistics of the sim frames."""
        from .mean_prior import fit_and_export
        export = self.run_dir / 'export'
        summary = {'method': self.method, 'seed': self.seed, 'stages': ['prior'],
                   'steps': {}, 'monitor': {}, 'run_dir': str(self.run_dir),
                   'export_dir': str(export)}
        if self.is_main:
            sim = self.dataset('sim')
            sim.train = False   # the stage-2 frames and resize, without random flips/jitter
            fit_and_export(sim, self.model_cfg, export,
                           metadata={'method': self.method, 'seed': self.seed,
                                     'config': self.cfg})
            (self.run_dir / 'summary.json').write_text(json.dumps(summary, indent=1))
        return summary

    def close(self, completed=True):
        """Leave the process group (DDP) while the interpreter is fully alive.

        A gloo group torn down during interpreter finalisation, with a DDP reducer still
        holding it through a reference cycle, can abort the process (``terminate called
        without an active exception``) after a successful run. So: wait for every rank,
        free the unreachable DDP wrappers, then destroy the group explicitly. After a failure
        (``completed=False``) the other ranks may never reach the barrier, so skip it.
        """
        if self.world > 1 and dist.is_initialized():
            if completed:
                dist.barrier()
            gc.collect()
            dist.destroy_process_group()
            gc.collect()


def run(cfg, run_dir, stage='all', method='twin_vae', resume=False):
    """Python API: train ``method`` on ``cfg`` into ``run_dir``; return a dict with export_dir.

    Raises NonFiniteLoss when a loss term becomes NaN/inf.
    """
    trainer = Trainer(cfg, run_dir, method, resume)
    try:
        result = trainer.run(stage)
    except BaseException:
        trainer.close(completed=False)
        raise
    trainer.close()
    return result


def build_parser():
    """Build the command line (``--help`` lists every option)."""
    p = argparse.ArgumentParser(
        prog='python -m training.train',
        description='Train the sim2real twin-VAE (stage 1: unpaired real+sim images; stage 2: '
                    'depth and segmentation heads on paired sim data) or a baseline, and '
                    'export RUN/export for sim2real_perception. Docs: docs/training.md',
        epilog='Outputs: RUN/checkpoints/{stage}_{last,best}.json (+ .safetensors, .optim.pt), '
               'RUN/logs/{stage}.csv, RUN/logs/tb (TensorBoard), RUN/samples/*.png, '
               'RUN/export (config.json + model.safetensors), RUN/summary.json. Exit codes: '
               f'0 done, 2 bad config/arguments/checkpoint, {EXIT_NONFINITE} NaN/inf loss, '
               '130/143 stopped by SIGINT/SIGTERM '
               'after saving. Multi-process: torchrun --nproc_per_node=N -m training.train ...')
    p.add_argument('--config', default='cpu',
                   help='preset name (paper, cpu, test) or a YAML file path (default: cpu)')
    p.add_argument('--stage', default='all', choices=STAGES,
                   help='twin_vae: 1 = twin-VAE only, 2 = heads only (needs a complete stage '
                        '1 in the run dir), all = both (default). Baselines: all only')
    p.add_argument('--method', default='twin_vae', choices=METHODS,
                   help='twin_vae (the paper), sim_only (real encoder + heads supervised on '
                        'sim frames, no adaptation) or oracle (same, supervised on the '
                        'real split data.eval train labels)')
    p.add_argument('--seed', type=int, default=None, help='overrides train.seed')
    p.add_argument('--run-dir', default=None,
                   help='output folder (default: outputs/runs/<preset>-<method>-s<seed>)')
    p.add_argument('--resume', action='store_true',
                   help='continue from RUN/checkpoints at the same step and schedule; '
                        'stages already complete are loaded, not retrained')
    p.add_argument('--set', dest='overrides', action='append', nargs='+', default=[],
                   metavar='KEY=VALUE',
                   help='config override, e.g. --set train.batch_size=4 loss.kl_real=0.01 '
                        '(repeatable; unknown keys are errors)')
    p.add_argument('--device', default=None,
                   help='auto | cpu | cuda | cuda:N (overrides train.device; auto = CUDA '
                        'when present, with bf16 autocast if train.bf16)')
    p.add_argument('--deterministic', action='store_true',
                   help='deterministic algorithms (bit-exact resume); overrides '
                        'train.deterministic')
    p.add_argument('--no-progress', action='store_true', help='no tqdm progress bar')
    return p


def main(argv=None):
    """Console entry point."""
    args = build_parser().parse_args(argv)
    overrides = [o for group in args.overrides for o in group]
    try:
        cfg = load_config(args.config, overrides)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if args.seed is not None:
        cfg['train']['seed'] = args.seed
    if args.device is not None:
        cfg['train']['device'] = args.device
    if args.deterministic:
        cfg['train']['deterministic'] = True
    if args.no_progress:
        cfg['train']['progress'] = False
    run_dir = args.run_dir or \
        f'outputs/runs/{cfg["preset"]}-{args.method}-s{cfg["train"]["seed"]}'
    try:
        summary = run(cfg, run_dir, args.stage, args.method, args.resume)
    except NonFiniteLoss as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_NONFINITE
    except (CheckpointError, ValueError, KeyError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    if int(os.environ.get('RANK', '0')) == 0:
        keys = ('method', 'seed', 'steps', 'monitor', 'export_dir')
        print(json.dumps({k: summary.get(k) for k in keys}))
    return 0


def exit_process(code):
    """Return ``code``; under torchrun, end the worker here with it instead.

    A torchrun worker whose run succeeded has left its gloo group (``Trainer.close``), yet
    its interpreter finalisation still occasionally aborted (``terminate called without an
    active exception``, once in CI), turning a finished training into a failed torchrun. So
    a worker flushes its output and exits without finalisation: nothing is left to write.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == '__main__':
    sys.exit(exit_process(main()))

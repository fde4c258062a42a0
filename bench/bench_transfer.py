"""Transfer benchmark: how much of the sim-to-real gap does each method close.

``python bench/bench_transfer.py`` generates one fixed procedural dataset (sim: Virtual
KITTI 2 tree; real-style: KITTI tree with a photo look), then trains and scores every row of
``ROWS`` for seeds 0, 1, 2 with ``training.compare`` at the ``cpu`` preset's fixed step
budget, and writes ``bench/results/bench_transfer.json`` and ``.md`` plus a learning-curve
figure. Rows: the ``mean_prior`` floor, ``sim_only`` (no adaptation), ``oracle``
(supervised on the real-style labels: the ceiling; both standardise each frame first), the
paper's recipe at this budget, and the project's variants. The benchmark checks its own
validity (every learned row beats the floor; the oracle is separated from sim_only by more
than three seed stds; a domain gap exists) and prints the targets of issue 10. Finished
runs are reused (``--retrain`` redoes them); ``--reuse`` carries rows over from an earlier
results JSON, so a new row can join the table on a machine that does not hold the old runs.
See docs/benchmarks.md.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sim2real_perception.labels import THING_CLASSES  # noqa: E402 (after the path)

#: The depth loss of the paper (eqs 15-16): MSE at weight 1, the default of every row before
#: the L1 one (the ``*_mse`` rows). The ``*_l1`` rows take L1 at weight 1; the default is L1
#: at weight 0.2 (config/cpu.yaml).
L2, L1 = ['loss.depth_norm=l2'], ['loss.depth_norm=l1']
WEIGHT_1 = ['loss.depth_real=1.0', 'loss.depth=1.0']
#: The step budget before the faster packing Conv3d backward (sim2real_perception/model/
#: packnet.py) let about 8 minutes hold 280 stage-2 and 850 baseline steps: 240 stage-2 and
#: 600 baseline steps. Every row measured then pins it, so its figures stay reproducible.
STEPS_240 = ['train.stage2_steps=240']
BASE_600 = ['train.supervised_steps=600']
#: The baselines' budget before that (300 steps).
SHORT = ['train.supervised_steps=300']
MSE = L2 + WEIGHT_1 + SHORT + STEPS_240
#: The default before that: 200 stage-2 steps. Every older row pins it (and the MSE and the
#: short baselines), so their runs stay valid.
PREVIOUS = MSE + ['train.stage2_steps=200']
#: The recipe before that: a 20-step stage-1 warm start of the twin VAE and the latent MMD of
#: eq 13 in stage 2 (bench/diagnose_label_speed.py: both slow the label head).
WARM_MMD = PREVIOUS + ['train.stage1_steps=20', 'loss.s2_mmd_s2r=1.0']
#: The paper's recipe on the cpu preset's network size and step budget: no skips, section
#: 3.2's three shared layers, linear depth, every loss weight 1 (eqs 10, 17, 20 unweighted),
#: no prior residual, the translated sim frames in stage 2, no critic, no sim randomisation,
#: constant lr, the stage-1 warm start and the latent MMD. A full stage-2 step costs about
#: 1.5 s here, so 290 steps fill the budget (about 7.5 min a run, the baselines' 850 steps
#: about 6.5); the row before 2026-12-07 had 120 (about 3 min, under half of it).
PAPER_RECIPE = WARM_MMD + L2 + [
    'model.skips=none', 'model.shared_layers=3', 'model.depth_encoding=linear',
    'model.prior=none', 'train.stage2_real_input=translated', 'train.lr_schedule=constant',
    'train.stage2_lean=false', 'train.stage2_steps=290',  # ~7.5 min
    'loss.s2_adv=0.0', 'loss.s2_pseudo_ce=0.0', 'loss.s2_pseudo_depth=0.0',
    'data.sim.appearance_aug=0.0'] + [
    f'loss.{k}=1.0' for k in ('recon_real', 'recon_sim', 'cycle_real', 'cycle_sim', 'kl_real',
                              'kl_sim', 's2_kl_real', 's2_kl_sim')]
#: A cheaper preset in Table 2's family (issue 10: more learning per minute): half the size
#: each side, one packing layer fewer, so the latent stays 2x4x64 and a full stage-2 step
#: costs about 0.28 s instead of 1.5 s.
PAPER_64X128 = ['model.height=64', 'model.width=128', 'model.pack_channels=[12,16,24,32]',
                'train.stage2_steps=1000']


#: The paper's eq 1 is the ELBO, a sum: KL over the latent's elements, the reconstruction
#: over the image's. The losses here are means (training/losses.py), so "every weight 1"
#: weighs the KL (latent elements / image elements) times more than the ELBO does: 192x for
#: a 2x4x64 latent of a 128x256 RGB image. The ``*_elbo`` rows give the four KL terms the
#: ELBO's share instead, and leave every other weight at 1.
def elbo_kl(latent_elements, image_elements):
    """The paper's recipe with its KL terms weighted as the ELBO's sums weigh them."""
    w = f'{latent_elements / image_elements:.3g}'
    return [f'loss.{k}={w}' for k in ('kl_real', 'kl_sim', 's2_kl_real', 's2_kl_sim')]


PAPER_ELBO = PAPER_RECIPE + elbo_kl(2 * 4 * 64, 128 * 256 * 3)
PAPER_64X128_ELBO = PAPER_RECIPE + PAPER_64X128 + elbo_kl(2 * 4 * 64, 64 * 128 * 3)
#: The previous default (before self-training): no self-training terms, 240 stage-2 steps
#: (the same ~5.7 min). The older ablations are of this recipe, so their runs stay valid.
PSEUDO_OFF = ['loss.s2_pseudo_ce=0.0', 'loss.s2_pseudo_depth=0.0']
NO_PSEUDO = WARM_MMD + PSEUDO_OFF + ['train.stage2_steps=240']
#: Per-image standardisation before the stem (``model.input_norm``): each channel to mean 0
#: and std 1 (the baselines' since 2026-12-07), or centred with one std over all channels.
INPUT_NORM = 'model.input_norm=image'
GROUND_GATE = 'model.prior_gate=ground'
#: Each pixel's depth error weighed by its class's share ** -0.5 (cars, poles, signs).
DEPTH_BALANCE = 'loss.depth_class_balance=0.5'
GROUND_CONTACT = 'model.ground_contact=true'
INPUT_NORM_JOINT = 'model.input_norm=image_joint'
#: Virtual KITTI 2 renders every clone viewpoint again at other times of day and weathers;
#: the ``*_vars`` rows train on six of them (the same viewpoints, 6x the sim images) from a
#: tree of their own (``--out``/data_variations), so every other row's data stays as it is.
SIM_VARIATIONS = ('clone', 'morning', 'sunset', 'overcast', 'fog', 'rain')
VARS_ROOT = '{sim_variations_root}'   # replaced by that tree's path
WITH_VARIATIONS = [f'data.sim.root={VARS_ROOT}', 'data.sim.variations=[]']   # [] = all there
#: The sim the rows train on (``--sim-look``). ``flat``: one colour per class and instance,
#: Lambert shading, no texture and no shadow (every table before 2026-12-07). ``textured``:
#: the same scenes with an engine's surface textures and the cast shadows of its sun, as
#: Virtual KITTI 2 renders them (``SimStyle.texture``, ``.shadow``), from a tree of its own
#: (``--out``/data_sim_textured); the real-style frames, the floor's labels and depths and
#: the oracle stay as they are.
SIM_TEXTURED = ('texture=0.6', 'shadow=0.45')
SIM_LOOKS = ('flat', 'textured')
TEXTURED_ROOT = '{sim_textured_root}'   # replaced by that tree's path
WITH_TEXTURED_SIM = [f'data.sim.root={TEXTURED_ROOT}']
TEXTURED_SUN_ROOT = '{sim_textured_sun_root}'   # the same, each scene lit by its own sun
WITH_TEXTURED_SUN_SIM = [f'data.sim.root={TEXTURED_SUN_ROOT}']
#: The textured sim's 600 frames drawn as 60 scenes of 10 frames instead of 12 of 50: more
#: layouts for the same number of frames (a sim is cheap to re-seed; the real drives stay).
SCENES60_ROOT = '{sim_textured_scenes60_root}'
WITH_SCENES60_SIM = [f'data.sim.root={SCENES60_ROOT}']
#: The real-style frames follow KITTI's (Cityscapes') taxonomy, which has no van: the
#: ``*_kitti`` rows train with VKITTI 2's vans read as car.
KITTI_CLASSES = 'data.sim.relabel={van: car}'
#: ``sim_only_region_kitti_bld``'s sim side: per-region randomisation, KITTI's taxonomy,
#: the buildings' hue kept; the best recipes build on it.
BLD = ['data.sim.region_aug=1.0', KITTI_CLASSES, 'data.sim.region_keep_hue=[building]']
#: ``sim_only_region_kitti_bld_st700_r2``: 700 supervised steps of ``_bld``, then 250
#: self-training steps on 2 labelled real frames each; its screens add one override.
ST700_R2 = BLD + ['train.supervised_steps=700', 'train.self_train_steps=250',
                  'train.self_train_batch=2', 'train.self_train_sim=false']
#: The thin "thing" classes the copy-paste rows paste from sim frames into real ones.
THINGS = '[' + ', '.join(THING_CLASSES) + ']'
#: ``sim_only_region_kitti_bld_st850_r2``: ``_bld``'s 850 steps, then the same self-training.
ST850_R2 = [o for o in ST700_R2 if o != 'train.supervised_steps=700']
#: The best in-budget recipe on the second CPU (row ``..._keep8_paste_lr05``), which its
#: ``_inorm`` ablations extend.
PASTE_LR05 = ST700_R2 + ['train.self_train_keep=0.8', f'train.self_train_paste={THINGS}',
                         'train.self_train_lr=5.0e-4']
#: Half the sim frames get the region randomisation and only the other half teach depth:
#: ``_bld`` buys labels and costs depth, so depth is learnt from unchanged frames only.
HALF_CLEAN_DEPTH = ['data.sim.region_aug_share=0.5', 'data.sim.region_aug_depth=false']
#: (row name, method, extra overrides, what it tests). Rows other than mean_prior, sim_only
#: and oracle count as adapted methods for the gap targets. The baselines share the default
#: network (skips, log depth, cosine lr) and depth loss: only adaptation differs.
ROWS = (
    ('mean_prior', 'mean_prior', [], 'floor: per-pixel mean sim depth / most frequent label'),
    ('mean_prior_scenes60', 'mean_prior', WITH_SCENES60_SIM,
     "the floor fitted on sim_only_scenes60's sim frames (60 scenes of 10)"),
    ('sim_only', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM],
     'the network supervised on clean sim frames: no adaptation; each frame standardised per '
     'channel first (model.input_norm: image), so its depth cannot follow the white balance'),
    ('oracle', 'oracle', [INPUT_NORM],
     "the network supervised on real-style labels: the ceiling; sim_only's standardisation"),
    ('mean_prior_contact', 'mean_prior', [GROUND_CONTACT],
     "reference: the floor's one map with _paste_lr05_contact's ground-contact depth"),
    ('sim_only_contact', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM, GROUND_CONTACT],
     "ablation: sim_only with _paste_lr05_contact's ground-contact depth (the same training): "
     'how much of that row\'s gain needs no adaptation'),
    ('oracle_contact', 'oracle', [INPUT_NORM, GROUND_CONTACT],
     "ablation: the oracle with _paste_lr05_contact's ground-contact depth"),
    ('sim_only_scenes60', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM]
     + WITH_SCENES60_SIM,
     'variant: sim_only trained on the textured sim drawn as 60 scenes of 10 frames (same '
     '600 frames): does the sim depth head memorise its 12 scenes?'),
    ('sim_only_dcb', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM, DEPTH_BALANCE],
     "variant: sim_only with a class-balanced depth loss (loss.depth_class_balance: 0.5): "
     'objects, a few per cent of the pixels, are where a per-pixel mean fails and where '
     'sim_only predicts even its own sim objects too far'),
    ('oracle_dcb', 'oracle', [INPUT_NORM, DEPTH_BALANCE],
     'ablation: the oracle with the class-balanced depth loss of sim_only_dcb'),
    ('sim_only_gate', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM, GROUND_GATE],
     'variant: sim_only whose depth is flat ground\'s where its own labels say road or '
     'terrain (model.prior_gate: ground): textures, shadows and markings on the ground '
     'cannot move it'),
    ('sim_only_gate_mean', 'sim_only',
     ['data.sim.appearance_aug=0.0', INPUT_NORM, 'model.prior_gate=ground_mean'],
     "ablation: sim_only_gate pulling the ground to the per-pixel mean over every class "
     '(the first try), not to the mean over the frames where the pixel was ground'),
    ('sim_only_raw', 'sim_only', ['data.sim.appearance_aug=0.0'],
     'reference: sim_only without the standardisation (the sim_only row before 2026-12-07)'),
    ('oracle_raw', 'oracle', [],
     'reference: the oracle without the standardisation (the oracle row before 2026-12-07)'),
    ('twin_vae_paper', 'twin_vae', PAPER_RECIPE, "the paper's twin-VAE recipe at this budget"),
    ('twin_vae_paper_120', 'twin_vae', PAPER_RECIPE + ['train.stage2_steps=120'],
     "ablation: the paper's recipe with 120 stage-2 steps (under half the budget: the "
     'twin_vae_paper row before 2026-12-07)'),
    ('twin_vae_paper_pack4', 'twin_vae', PAPER_RECIPE + ['model.pack_channels=[12,16,24]'],
     "ablation: the paper's recipe with four packing layers instead of six (an 8x16 latent, "
     'not 2x4): is the latent too small to localise?'),
    ('twin_vae_paper_64x128', 'twin_vae', PAPER_RECIPE + PAPER_64X128,
     "ablation: the paper's recipe at 64x128 with five packing layers (the same 2x4x64 "
     'latent), 1000 stage-2 steps in about 5 minutes: does it pass the floor with 3.4x the '
     'steps?'),
    ('twin_vae_paper_elbo', 'twin_vae', PAPER_ELBO,
     "ablation: the paper's recipe with its KL terms weighted as the ELBO of eq 1 weighs them "
     '(latent / image elements, 0.0052): with every mean-reduced weight at 1 the latent '
     'collapses to the prior (s2_kl_sim -> 0) and the heads see noise'),
    ('twin_vae_paper_64x128_elbo', 'twin_vae', PAPER_64X128_ELBO,
     'ablation: twin_vae_paper_64x128 with the ELBO-weighted KL terms (0.0208)'),
    ('twin_vae_paper_64x128_elbo_mu', 'twin_vae', PAPER_64X128_ELBO + ['loss.heads_on=mu'],
     'ablation: twin_vae_paper_64x128_elbo whose heads decode the latent mean in training, '
     'as at run time, not mean + unit noise (loss.heads_on: mu): is the noise what keeps '
     'them from reading the latent?'),
    ('twin_vae', 'twin_vae', [], 'the cpu preset recipe (shipped default)'),
    ('sim_only_aug', 'sim_only', [],
     'ablation: sim_only with the sim appearance randomisation, no twin-VAE'),
    ('twin_vae_240', 'twin_vae', STEPS_240,
     'ablation: the default with 240 stage-2 steps (the previous default, before the faster '
     'Conv3d backward)'),
    ('sim_only_600', 'sim_only', ['data.sim.appearance_aug=0.0'] + BASE_600,
     'ablation: sim_only with 600 steps (the previous budget)'),
    ('oracle_600', 'oracle', BASE_600,
     'ablation: the oracle with 600 steps (the previous budget)'),
    ('sim_only_aug_600', 'sim_only', BASE_600,
     'ablation: sim_only_aug with 600 steps (the previous budget)'),
    ('twin_vae_region', 'twin_vae', ['data.sim.region_aug=1.0'],
     'variant: the default with per-region texture, tint, blotch and hard-shadow '
     'randomisation of the sim frames (data.sim.region_aug)'),
    ('sim_only_region', 'sim_only', ['data.sim.region_aug=1.0'],
     'ablation: sim_only_aug with the per-region randomisation, no twin-VAE'),
    ('sim_only_region_kitti', 'sim_only', ['data.sim.region_aug=1.0', KITTI_CLASSES],
     "variant: sim_only_region trained in the real camera's label taxonomy (data.sim.relabel: "
     'van read as car, as KITTI and Cityscapes label vans), so it never predicts a class the '
     'real ground truth cannot hold'),
    ('sim_only_region_kitti_veg', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'data.sim.region_keep_hue=[vegetation]'],
     "variant: sim_only_region_kitti keeping vegetation's hue (data.sim.region_keep_hue): the "
     'random tint made green a useless cue, and textured hedges were read as building'),
    ('sim_only_region_kitti_bld', 'sim_only',
     BLD,
     "variant: sim_only_region_kitti keeping the buildings' hue (data.sim.region_keep_hue): a "
     'randomly tinted building can be green, so a green box (a hedge) reads as building'),
    ('sim_only_region_kitti_cb', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'loss.ce_class_balance=0.5'],
     'variant: sim_only_region_kitti with class-balanced cross entropy (loss.ce_class_balance '
     '0.5: each pixel weighs share ** -0.5 of its class), so thin classes learn in 850 steps'),
    ('self_train_region_kitti', 'twin_vae',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.stage2_steps=850',
      'train.stage2_source_steps=600', 'loss.s2_kl_real=0.0', 'loss.s2_kl_sim=0.0',
      'loss.s2_adv=0.0', 'loss.pseudo_teacher_ema=0.99'],
     'variant: sim_only_region_kitti (600 sim steps), then 250 steps adding self-training on '
     'the real frames (labels and depth of an EMA teacher, decay 0.99, on a re-rendered view): '
     'adaptation from a source-trained network, with no latent or critic term'),
    ('sim_only_region_kitti_mix', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.style_mix=0.5'],
     'variant: sim_only_region_kitti whose sim frames get, half of the time, the first two '
     "encoder layers' channel statistics of a random real frame (train.style_mix: MixStyle "
     'with an unlabelled real partner), so the heads learn sim labels under real texture '
     'statistics'),
    ('sim_only_region_kitti_mix_strong', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.style_mix=1.0',
      'train.style_mix_layers=[0, 1, 2]'],
     'ablation: sim_only_region_kitti_mix with every sim frame mixed, at three layers'),
    ('sim_only_region_kitti_bld_mix', 'sim_only',
     BLD + ['train.style_mix=0.5'],
     "variant: sim_only_region_kitti_bld (the best labels) with sim_only_region_kitti_mix's "
     'style mixing (whose depth was steadier on two seeds of three)'),
    ('sim_only_region_kitti_shadow', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'data.sim.shadow_aug=1.0'],
     "variant: sim_only_region_kitti with the sun's cast shadows of the frame's own objects on "
     'the road and grass, traced through the sim depth for a random sun (data.sim.shadow_aug): '
     'real shadows start at their object and have its shape, random blobs do not'),
    ('sim_only_region_kitti_bld_shadow', 'sim_only',
     BLD + ['data.sim.shadow_aug=1.0'],
     "variant: sim_only_region_kitti_bld (the buildings keep their hue) with "
     "sim_only_region_kitti_shadow's cast shadows"),
    ('sim_only_region_kitti_st', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.supervised_steps=600',
      'train.self_train_steps=200', 'train.self_train_batch=2'],
     'variant: sim_only_region_kitti in 600 steps, then 200 steps of offline self-training '
     '(train.self_train_steps: it labels the real training frames once, keeps the most '
     'confident half of each class, and trains on them re-rendered beside the sim frames, '
     '2 + 2 frames a step), in the same wall time'),
    ('sim_only_region_kitti_st850', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.self_train_steps=250'],
     'over the budget (about 11.5 min a run): all 850 steps of sim_only_region_kitti, then '
     '250 steps of offline self-training with 4 sim + 4 real frames a step; its supervised '
     "stage is the same as sim_only_region_kitti's, so that row's checkpoints can be copied "
     'in and resumed'),
    ('sim_only_region_kitti_st850_b2', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.self_train_steps=250',
      'train.self_train_batch=2'],
     'over the budget (about 10 min a run): sim_only_region_kitti_st850 with 2 + 2 frames a '
     'self-training step, the cost of a supervised step'),
    ('sim_only_region_kitti_st850_b2_noreal', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.self_train_steps=250',
      'train.self_train_batch=2', 'loss.self_train_ce=0'],
     'control of sim_only_region_kitti_st850_b2: the same 250 steps, sim frames and new '
     'learning-rate cycle with the real frames\' term at weight 0, so the labels, not the '
     'extra steps, are what it measures'),
    ('sim_only_region_kitti_bld_st850_b2', 'sim_only',
     BLD + ['train.self_train_steps=250', 'train.self_train_batch=2'],
     'over the budget (850 + 250 steps of a supervised step\'s cost, 436-628 s a run): '
     'sim_only_region_kitti_st850_b2 from '
     "sim_only_region_kitti_bld's network (the best labels inside the budget) as the teacher; "
     "its supervised stage is that row's, so those checkpoints can be copied in and resumed"),
    ('sim_only_region_kitti_bld_st850_r2', 'sim_only',
     ST850_R2,
     'over the budget: sim_only_region_kitti_bld_st850_b2 with self-training steps of the 2 '
     'labelled real frames alone (train.self_train_sim false: half the cost of a step), the '
     "screen of sim_only_region_kitti_bld_st700_r2; it resumes sim_only_region_kitti_bld's "
     'copied checkpoints'),
    ('sim_only_region_kitti_bld_st700_r2', 'sim_only',
     ST700_R2,
     'variant: sim_only_region_kitti_bld in 700 steps, then 250 self-training steps of 2 '
     'labelled real frames each (about 125 supervised steps\' cost), so the whole run costs '
     'about the 850 steps of the other rows'),
    ('sim_only_region_kitti_bld_st700_r2_rounds2', 'sim_only',
     ST700_R2 + ['train.self_train_rounds=2'],
     'over the budget (a second labelling pass, about 20 s): sim_only_region_kitti_bld_st700_r2 '
     'in two rounds of 125 steps, the second labelling the real frames again with the network '
     "the first left (train.self_train_rounds, CBST's rounds); it resumes that row's copied "
     'supervised checkpoints'),
    ('sim_only_region_kitti_bld_st700_r2_keep8', 'sim_only',
     ST700_R2 + ['train.self_train_keep=0.8'],
     'ablation: sim_only_region_kitti_bld_st700_r2 keeping 80 % of each class\'s pixels as '
     'labels instead of 50 % (more labels, noisier); same cost'),
    ('sim_only_region_kitti_bld_st700_r2_lr3', 'sim_only',
     ST700_R2 + ['train.self_train_lr=3.0e-3'],
     'ablation: sim_only_region_kitti_bld_st700_r2 with the self-training cycle from the '
     "supervised stage's peak learning rate (3e-3) instead of 1e-3; same cost"),
    ('sim_only_region_kitti_bld_st850_r2_keep8', 'sim_only',
     ST850_R2 + ['train.self_train_keep=0.8'],
     'over the budget (the main job\'s recipe sim_only_region_kitti_bld_st_keep8, which has 15 '
     'minutes): sim_only_region_kitti_bld_st850_r2 keeping 80 % of each class\'s pixels as '
     "labels; it resumes sim_only_region_kitti_bld's copied checkpoints"),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste', 'sim_only',
     ST700_R2 + ['train.self_train_keep=0.8', f'train.self_train_paste={THINGS}'],
     'variant: sim_only_region_kitti_bld_st700_r2_keep8 with the sim frames\' cars, trucks, '
     'poles, signs, lights and guard rails pasted with their labels onto each self-trained '
     'real frame (train.self_train_paste, copy-paste): the thin classes the real frames\' own '
     'labels miss get exact targets in a real context; the same steps, plus loading 2 sim '
     'frames a step'),
    ('sim_only_region_kitti_bld_st700_r2_keep10_paste', 'sim_only',
     ST700_R2 + ['train.self_train_keep=1.0', f'train.self_train_paste={THINGS}'],
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste keeping every pixel the teacher '
     'labelled (self_train_keep 1.0, pseudo_threshold no longer drops any); same cost'),
    ('sim_only_region_kitti_bld_half_cd', 'sim_only',
     BLD + HALF_CLEAN_DEPTH,
     "variant: _bld on half the sim frames, and depth supervised on the other half only "
     '(data.sim.region_aug_share, region_aug_depth): the labels of the randomisation without '
     'its cost to depth?'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_half', 'sim_only',
     PASTE_LR05 + ['data.sim.region_aug_share=0.5'],
     'ablation: _paste_lr05 with the region randomisation on half the sim frames, depth on '
     'all'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_half_cd', 'sim_only',
     PASTE_LR05 + HALF_CLEAN_DEPTH,
     'variant: _paste_lr05 with the region randomisation on half the sim frames and depth '
     'supervised on the other half only'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05', 'sim_only',
     PASTE_LR05,
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste with half the self-training '
     'learning rate (5e-4; 3e-3 lost on every seed); same cost'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_depth', 'sim_only',
     PASTE_LR05 + ['loss.self_train_depth=1.0'],
     'variant: _paste_lr05 whose self-training also teaches depth on the sim objects it '
     'pastes into the real frames, to their sim depth (loss.self_train_depth): object depth '
     "in a real frame's context; same cost"),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_dcb', 'sim_only',
     PASTE_LR05 + [DEPTH_BALANCE],
     "variant: _paste_lr05 with sim_only_dcb's class-balanced depth loss in its supervised "
     'steps; same cost'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_contact', 'sim_only',
     PASTE_LR05 + [GROUND_CONTACT],
     "variant: _paste_lr05 whose upright surfaces take the depth of the ground at their "
     "foot, read from its own labels (model.ground_contact, at inference only: the same "
     "training)"),
    ('sim_only_kitti_st700_r2_keep8_paste_lr05', 'sim_only',
     ['data.sim.appearance_aug=0.0', INPUT_NORM]
     + [o for o in PASTE_LR05 if not o.startswith('data.sim.region')],
     'ablation: _paste_lr05 without its sim-side randomisation: the standardised sim_only in '
     "KITTI's taxonomy, then the same self-training (which half buys what, on the textured "
     'sim)'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr025', 'sim_only',
     ST700_R2 + ['train.self_train_keep=0.8', f'train.self_train_paste={THINGS}',
                 'train.self_train_lr=2.5e-4'],
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05 with half that learning '
     'rate again (2.5e-4); same cost'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_classmix', 'sim_only',
     ST700_R2 + ['train.self_train_keep=0.8', 'train.self_train_paste=classmix'],
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste pasting a random half of each '
     "sim frame's classes, regions as well as objects (DACS's ClassMix) instead of its "
     'objects; same cost'),
    ('sim_only_region_kitti_bld_st850_r2_keep8_paste', 'sim_only',
     ST850_R2 + ['train.self_train_keep=0.8', f'train.self_train_paste={THINGS}'],
     'over the budget: sim_only_region_kitti_bld_st850_r2_keep8 with the copy-paste of '
     "sim_only_region_kitti_bld_st700_r2_keep8_paste; it resumes sim_only_region_kitti_bld's "
     'copied checkpoints'),
    ('sim_only_region_kitti_bld_st850_r2_keep8_paste_contact', 'sim_only',
     ST850_R2 + ['train.self_train_keep=0.8', f'train.self_train_paste={THINGS}',
                 GROUND_CONTACT],
     "over the budget: the main job's sim_only_region_kitti_bld_st850_r2_keep8_paste with "
     "_paste_lr05_contact's ground-contact depth (the same training)"),
    ('sim_only_region_kitti_bld_st750_r2_keep8', 'sim_only',
     BLD + ['train.supervised_steps=750', 'train.self_train_steps=125',
            'train.self_train_batch=2', 'train.self_train_sim=false',
            'train.self_train_keep=0.8'],
     'variant: sim_only_region_kitti_bld_st700_r2_keep8 with 50 more supervised steps and half '
     'the self-training steps (125 of 2 labelled real frames; one 125-step round gave the '
     '250 steps\' labels), about the same cost: a better teacher, the same gain'),
    ('sim_only_region_kitti_swa', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.weight_average=0.5'],
     'variant: sim_only_region_kitti exporting the mean of the weights of its last 425 steps '
     '(train.weight_average, SWA): a flatter minimum of the sim loss, which transfers better '
     '(SWAD)'),
    ('sim_only_region_kitti_swa_const', 'sim_only',
     ['data.sim.region_aug=1.0', KITTI_CLASSES, 'train.lr_schedule=constant',
      'train.weight_average=0.5'],
     "variant: sim_only_region_kitti_swa with SWA's own schedule: a constant learning rate "
     '(3e-3), so the averaged half explores rather than settles'),
    ('sim_only_region_hue', 'sim_only', ['data.sim.region_aug=1.0', 'data.sim.region_tint=0.0'],
     'variant: sim_only_region keeping each region\'s hue (region_tint 0: brightness gains and '
     'blotches of the region\'s own colour), so colour stays a cue'),
    ('sim_only_region_tint05', 'sim_only', ['data.sim.region_aug=1.0',
                                            'data.sim.region_tint=0.5'],
     "variant: sim_only_region with half the hue change (region_tint 0.5): between the full "
     'tint (better sky, terrain and depth) and none (better vegetation and building)'),
    ('sim_only_region_strong', 'sim_only', ['data.sim.region_aug=1.5'],
     'ablation: sim_only_region at 1.5x the randomisation strength'),
    ('sim_only_region_half', 'sim_only', ['data.sim.region_aug=0.5'],
     'ablation: sim_only_region at half the randomisation strength'),
    ('twin_vae_src_region', 'twin_vae', ['data.sim.region_aug=1.0', 'train.stage2_steps=600',
                                         'train.stage2_source_steps=500'],
     'variant: twin_vae_region with 500 source-only steps, then 100 steps of every term: '
     'the labels learnt at sim_only cost, the real-frame terms on top'),
    ('twin_vae_src', 'twin_vae', ['train.stage2_steps=420', 'train.stage2_source_steps=300'],
     'variant: 300 source-only steps (E_R and the heads on sim frames alone), then 120 steps '
     'of every term: adaptation from a source-trained network, as UDA methods start'),
    ('twin_vae_mse', 'twin_vae', MSE,
     "ablation: the default with the paper's depth MSE at weight 1 (the previous default)"),
    ('sim_only_mse', 'sim_only', ['data.sim.appearance_aug=0.0'] + MSE,
     'ablation: sim_only_300 with the depth MSE at weight 1 (the previous baseline)'),
    ('oracle_mse', 'oracle', MSE,
     'ablation: oracle_300 with the depth MSE at weight 1 (the previous baseline)'),
    ('sim_only_aug_mse', 'sim_only', MSE,
     'ablation: sim_only_aug_300 with the depth MSE at weight 1 (the previous baseline)'),
    ('sim_only_300', 'sim_only', ['data.sim.appearance_aug=0.0'] + SHORT,
     'ablation: sim_only with 300 steps (the budget before)'),
    ('oracle_300', 'oracle', SHORT, 'ablation: the oracle with 300 steps (the budget before)'),
    ('sim_only_aug_300', 'sim_only', SHORT,
     'ablation: sim_only_aug with 300 steps (the budget before)'),
    ('twin_vae_l1', 'twin_vae', L1 + WEIGHT_1 + STEPS_240,
     'ablation: the default with the L1 depth loss at weight 1, not 0.2'),
    ('sim_only_l1', 'sim_only', ['data.sim.appearance_aug=0.0'] + L1 + WEIGHT_1 + SHORT,
     'ablation: sim_only_300 with the L1 depth loss at weight 1'),
    ('oracle_l1', 'oracle', L1 + WEIGHT_1 + SHORT,
     'ablation: oracle_300 with the L1 depth loss at weight 1'),
    ('sim_only_aug_l1', 'sim_only', L1 + WEIGHT_1 + SHORT,
     'ablation: sim_only_aug_300 with the L1 depth loss at weight 1'),
    ('twin_vae_ema', 'twin_vae', ['loss.pseudo_teacher_ema=0.95'] + STEPS_240,
     "variant: the default with an EMA teacher (decay 0.95) giving self-training's targets "
     '(Mean Teacher, DACS), not the network itself'),
    ('twin_vae_skip_es', 'twin_vae', MSE + ['loss.s2_kl_sim=0.0', 'train.stage2_steps=320'],
     "variant: twin_vae_mse without E_S in stage 2 (eq 12's KL at 0: nothing else reads it; "
     '2.0 -> 1.5 s per step in bench_train), spending it on 320 steps'),
    ('twin_vae_200', 'twin_vae', PREVIOUS,
     'ablation: twin_vae_mse with 200 stage-2 steps (the default before that)'),
    ('twin_vae_warm_mmd', 'twin_vae', WARM_MMD,
     'ablation: twin_vae_200 with the stage-1 warm start and the latent MMD (the default '
     'before that)'),
    ('twin_vae_nopseudo', 'twin_vae', NO_PSEUDO,
     'ablation: twin_vae_warm_mmd without self-training on real frames (the default before)'),
    ('twin_vae_pseudo_ce', 'twin_vae', WARM_MMD + ['loss.s2_pseudo_depth=0.0'],
     'ablation: twin_vae_warm_mmd self-training on labels only (no depth consistency)'),
    ('twin_vae_pseudo_depth', 'twin_vae', WARM_MMD + ['loss.s2_pseudo_ce=0.0'],
     'ablation: twin_vae_warm_mmd with depth consistency on real frames only'),
    ('twin_vae_noadv', 'twin_vae', NO_PSEUDO + ['loss.s2_adv=0.0'],
     'ablation: twin_vae_nopseudo without the feature critic'),
    ('twin_vae_translated', 'twin_vae', WARM_MMD + PSEUDO_OFF + [
        'train.stage2_real_input=translated', 'train.stage2_steps=160'],
     "ablation: twin_vae_nopseudo with the paper's translated sim frames for E_R"),
    ('twin_vae_noskip', 'twin_vae', NO_PSEUDO + ['model.skips=none'],
     'ablation: twin_vae_nopseudo without skips from the shared encoder layers'),
    ('twin_vae_noprior', 'twin_vae', NO_PSEUDO + ['model.prior=none'],
     'ablation: twin_vae_nopseudo without the residual over the sim prior'),
    ('sim_only_noprior', 'sim_only', ['data.sim.appearance_aug=0.0', 'model.prior=none']
     + MSE,
     'ablation: sim_only without the residual over the sim prior'),
    ('sim_only_aug_vars', 'sim_only', MSE + WITH_VARIATIONS,
     "variant: sim_only_aug trained on VKITTI 2's six variations of each sim viewpoint"),
    ('twin_vae_vars', 'twin_vae', WARM_MMD + WITH_VARIATIONS,
     "variant: twin_vae_warm_mmd trained on VKITTI 2's six variations of each sim viewpoint"),
    ('sim_only_jitter', 'sim_only', ['data.sim.appearance_aug=0.0', 'data.sim.color_jitter=0.2'],
     "ablation: sim_only with torchvision-style colour jitter (brightness, contrast, "
     'saturation, hue): does it stop the depth scale following the colour of the frame?'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_inorm_joint', 'sim_only',
     PASTE_LR05 + [INPUT_NORM_JOINT],
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_inorm with '
     'one std over all channels (model.input_norm: image_joint), which keeps the channels\' '
     'relative contrast'),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_inorm', 'sim_only',
     PASTE_LR05 + [INPUT_NORM],
     'ablation: sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05 with the per-image '
     'standardisation of sim_only (model.input_norm: image)'),
    ('sim_only_tex_sun', 'sim_only', ['data.sim.appearance_aug=0.0'] + WITH_TEXTURED_SUN_SIM,
     'variant: sim_only on the textured sim (--sim-look textured) with each sim scene lit by '
     "its own sun (SimStyle.scene_sun), as each of Virtual KITTI 2's worlds is"),
    ('sim_only_sun', 'sim_only', ['data.sim.appearance_aug=0.0', INPUT_NORM]
     + WITH_TEXTURED_SUN_SIM,
     "variant: today's sim_only (standardised input) on sim_only_tex_sun's sim: the textured "
     "sim with each scene lit by its own sun. The sim's one fixed sun is the look that costs "
     "sim-trained depth most (bench/analyse_gap_effects.py's sim_look_sun)"),
    ('sim_only_aug_inorm', 'sim_only', [INPUT_NORM],
     "ablation: today's sim_only (standardised input) with sim_only_aug's camera-photo "
     'randomisation of the sim frames (data.sim.appearance_aug: 1, the cpu preset\'s)'),
    ('sim_only_sun_aug_inorm', 'sim_only', [INPUT_NORM] + WITH_TEXTURED_SUN_SIM,
     "ablation: sim_only_aug_inorm on sim_only_sun's sim: the sun's direction varied by the "
     "sim, the camera's look by the randomisation"),
    ('sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_sun', 'sim_only',
     PASTE_LR05 + WITH_TEXTURED_SUN_SIM,
     "variant: sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05 on sim_only_sun's sim "
     '(each textured sim scene lit by its own sun)'),
    ('twin_vae_classmix', 'twin_vae', WARM_MMD + ['loss.pseudo_mix=classmix'],
     "variant: twin_vae_warm_mmd's self-training view with half of a sim frame's classes "
     'pasted in (DACS)'),
)
#: Rows run by default; the others with --rows (their cost is a 3-seed run each).
DEFAULT_ROWS = ('mean_prior', 'sim_only', 'oracle', 'twin_vae_paper', 'twin_vae',
                'sim_only_aug', 'sim_only_region', 'sim_only_region_kitti')
BASELINES = ('mean_prior', 'sim_only', 'oracle')
#: The baselines as they were before they standardised their input: shown, never adapted rows.
REFERENCES = ('sim_only_raw', 'oracle_raw')
#: Rows that train longer than the 8-minute budget: shown (marked), never a target's best row.
OVER_BUDGET = ('self_train_region_kitti', 'sim_only_region_kitti_st850',
               'sim_only_region_kitti_st850_b2', 'sim_only_region_kitti_st850_b2_noreal',
               'sim_only_region_kitti_bld_st850_b2', 'sim_only_region_kitti_bld_st850_r2',
               'sim_only_region_kitti_bld_st700_r2_rounds2',
               'sim_only_region_kitti_bld_st850_r2_keep8',
               'sim_only_region_kitti_bld_st850_r2_keep8_paste',
               'sim_only_region_kitti_bld_st850_r2_keep8_paste_contact')
#: Virtual KITTI 2 clones KITTI's camera (height, pitch), so the sim camera here matches
#: the real-style one: the gap left is appearance, the part adaptation can close.
SIM_CAMERA = ('cam_height_m=1.65', 'pitch_deg=1.0')
DATA = {'sim_frames': 600, 'real_frames': 600, 'height': 192, 'width': 640,
        'frames_per_sequence': 50, 'seed': 0, 'sim_style': SIM_CAMERA}
METRICS = ('abs_rel', 'miou', 'pixel_acc', 'label_change_share')
QUICK_DATA = {'sim_frames': 12, 'real_frames': 16, 'height': 64, 'width': 192,
              'frames_per_sequence': 4, 'seed': 0, 'sim_style': SIM_CAMERA}
#: The second real-style test set: drives no run trains on (bench/analyse_unseen_drives.py),
#: because the val split is the last metres of the drives the oracle trains on.
UNSEEN = {'drives': 12, 'frames_per_drive': 10}
QUICK_UNSEEN = {'drives': 2, 'frames_per_drive': 2}


def build_parser():
    """Return the command line (docs/benchmarks.md)."""
    p = argparse.ArgumentParser(
        prog='python bench/bench_transfer.py',
        description='Train and score mean_prior, sim_only, oracle, the paper recipe and the '
                    'variants on fixed procedural data for several seeds; check the '
                    "benchmark's validity; write bench/results/bench_transfer.json/.md "
                    '(docs/benchmarks.md).')
    p.add_argument('--out', default='outputs/bench_transfer',
                   help='work folder: data/, runs/, compare.json (default: %(default)s)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                   help='training seeds (default: 0 1 2)')
    p.add_argument('--rows', nargs='+', default=None, metavar='ROW',
                   choices=[r[0] for r in ROWS],
                   help=f'rows to run (default: {" ".join(DEFAULT_ROWS)}; all: '
                        f'{" ".join(r[0] for r in ROWS)})')
    p.add_argument('--config', default='cpu', help='preset (default: cpu)')
    p.add_argument('--set', nargs='+', action='append', default=[], metavar='KEY=VALUE',
                   help='extra config overrides for every row (changes the budget: say so)')
    p.add_argument('--results', default=str(REPO / 'bench' / 'results'),
                   help='where bench_transfer.json/.md/_curves.png go (default: bench/results)')
    p.add_argument('--quick', action='store_true',
                   help='tiny data and the test preset: checks the plumbing in a minute, '
                        'measures nothing')
    p.add_argument('--retrain', action='store_true', help='retrain finished runs')
    p.add_argument('--no-unseen', action='store_true',
                   help='skip scoring every run on real-style drives no run trained on '
                        '(--out/data_unseen; about a second per model and seed)')
    p.add_argument('--sim-look', choices=SIM_LOOKS, default='flat',
                   help='the sim every row but the oracle trains on: flat (one colour per '
                        'class, no texture or shadow) or textured (the same scenes with '
                        "an engine's textures and cast shadows, as Virtual KITTI 2); runs go "
                        "to --out/compare (flat) or --out/compare_textured (default: "
                        '%(default)s)')
    p.add_argument('--reuse', metavar='JSON', default=None,
                   help="an earlier bench_transfer.json made on the same kind of CPU: rows "
                        'with no finished run in --out whose definition, preset and data are '
                        'unchanged take its recorded runs instead of training again (marked '
                        'in the tables); a row it lacks any seed or split of is trained')
    return p


def make_data(out, spec):
    """Generate (or reuse) the fixed procedural dataset; return its folder."""
    from training.data.make_procedural import generate
    folder = Path(out) / 'data'
    generate(folder, **spec)
    return folder


def with_sim_roots(out, spec, rows):
    """Generate the sim trees of ``*_vars``, the textured sim and ``sim_only_tex_sun`` as needed.

    Returns the rows with each tree's path in place of its placeholder.
    """
    from training.data.make_procedural import generate
    trees = {VARS_ROOT: ('data_variations', {'variations': list(SIM_VARIATIONS)}),
             TEXTURED_ROOT: ('data_sim_textured',
                             {'sim_style': tuple(spec['sim_style']) + SIM_TEXTURED}),
             TEXTURED_SUN_ROOT: ('data_sim_textured_sun',
                                 {'sim_style': tuple(spec['sim_style']) + SIM_TEXTURED
                                  + ('scene_sun=1',)}),
             SCENES60_ROOT: ('data_sim_textured_scenes60',
                             {'sim_style': tuple(spec['sim_style']) + SIM_TEXTURED,
                              'frames_per_sequence': max(1, spec['frames_per_sequence'] // 5)})}
    for placeholder, (name, change) in trees.items():
        if not any(placeholder in o for row in rows for o in row[2]):
            continue
        folder = (Path(out) / name).resolve()
        generate(folder, **{**spec, 'real_frames': 0, **change})
        rows = [(row, method, [o.replace(placeholder, str(folder)) for o in extra], what)
                for row, method, extra, what in rows]
    return rows


def compare_dir(out, sim_look='flat'):
    """Return the training.compare folder of one sim look: each look keeps its own runs."""
    return Path(out) / ('compare' if sim_look == 'flat' else f'compare_{sim_look}')


def with_sim_look(rows, sim_look):
    """Return the rows as ``sim_look`` trains them.

    On the textured sim every row trains on its tree but those whose method reads no sim
    frame (the oracle; ``training.compare.UNUSED_KEYS``) and those that name a sim tree of
    their own.
    """
    if sim_look == 'flat':
        return rows
    from training.compare import UNUSED_KEYS
    return [(name, method, extra if 'data.sim' in UNUSED_KEYS.get(method, ()) or any(
        o.startswith('data.sim.root=') for o in extra) else extra + WITH_TEXTURED_SIM, what)
        for name, method, extra, what in rows]


def reusable_runs(path, rows, seeds, splits, config, spec, out, sim_look='flat'):
    """Return ({row: its recorded runs}, the JSON) of the rows ``--reuse`` can carry over.

    A row is carried over when ``out`` holds no finished run of it, the JSON was made with
    the same preset and data on the same kind of CPU (``cpu_model``: another one rounds
    otherwise, and the runs drift apart), defines the row the same way (method and
    overrides), and records every (seed, split) asked for. Its records keep their figures
    and wall time.
    """
    prev = json.loads(Path(path).read_text())
    same_data = json.loads(json.dumps(spec)) == prev.get('data') and \
        prev.get('sim_look', 'flat') == sim_look
    if prev.get('config') != config or not same_data:
        print(f'--reuse {path}: another preset or other data; nothing carried over')
        return {}, prev
    here = cpu_model()
    there = {k: prev.get('machine', {}).get(k) for k in here}
    if here != there:   # another CPU rounds otherwise: its runs are another sample
        print(f'--reuse {path}: made on {there or "an unrecorded CPU"}, this is {here}; '
              'nothing carried over')
        return {}, prev
    runs_dir = compare_dir(out, sim_look) / 'runs'
    carried = {}
    for name, method, extra, _ in rows:
        defined = prev.get('rows', {}).get(name)
        if defined is None or defined.get('method') != method or \
                list(defined.get('overrides', [])) != list(extra):
            continue
        if any(_finished(runs_dir / f'{name}_s{seed}') for seed in seeds):
            continue
        mine = [r for r in prev.get('runs', []) if r['method'] == name
                and r['seed'] in seeds and r['split'] in splits]
        if {(r['seed'], r['split']) for r in mine} == {(a, b) for a in seeds for b in splits}:
            carried[name] = [{**r, 'reused_from': prev.get('created')} for r in mine]
    return carried, prev


def _finished(run_dir):
    try:
        return bool(json.loads((run_dir / 'compare_run.json').read_text()).get('done'))
    except (OSError, ValueError):
        return False


def all_finished(out, rows, seed, sim_look='flat'):
    """Return whether every row's run of ``seed`` has finished (nothing to train for it)."""
    runs = compare_dir(out, sim_look) / 'runs'
    return all(_finished(runs / f'{name}_s{seed}') for name, *_ in rows)


def run_rows(args, data_dir, rows, seeds):
    """Train and score the rows with training.compare; return compare.json's dict."""
    from training.compare import build_parser as compare_parser, run_compare
    argv = ['--config', args.config, '--seeds', *map(str, seeds), '--out',
            str(compare_dir(args.out, args.sim_look)), '--data-root', str(data_dir), '--quiet',
            '--methods', *[r[1] for r in rows if r[0] == r[1] and not r[2]]]
    for name, method, extra, _ in rows:
        if name == method and not extra:
            continue
        argv += ['--variant', ','.join([f'{name}={method}', *extra])]
    overrides = ['train.monitor_every=25'] + [o for g in args.set for o in g]
    if args.quick:   # 4-frame sequences: keep one val frame per sequence
        overrides += [f'data.{s}.val_fraction=0.25' for s in ('sim', 'real', 'eval')]
    argv += ['--set', *overrides]
    if args.retrain:
        argv.append('--retrain')
    cargs = compare_parser().parse_args(argv)
    if not [r for r in rows if r[0] == r[1] and not r[2]]:
        cargs.methods = []
    return run_compare(cargs)


def _mean_std(values):
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return {'mean': math.nan, 'std': None, 'n': 0}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 \
        else None
    return {'mean': mean, 'std': std, 'n': len(vals)}


def split_stats(runs, name, split):
    """Mean and std of every metric over one row's runs on one split."""
    mine = [r for r in runs if r['method'] == name and r['split'] == split]
    return {m: _mean_std([r[m] for r in mine]) for m in METRICS}


def collect(report, rows, carried=None):
    """Flatten compare.json into the benchmark's ``runs`` list and per-method statistics.

    ``carried``: row -> runs taken over from an earlier JSON (``reusable_runs``).
    """
    runs = []
    gt_share = {}
    for split, data in report.get('splits', {}).items():
        for run_name, result in data['runs'].items():
            info = report['runs'][run_name]
            seg, depth = result.get('segmentation', {}), result.get('depth', {})
            runs.append({'method': info['row'], 'seed': info['seed'], 'split': split,
                         'abs_rel': depth.get('abs_rel'), 'miou': seg.get('miou'),
                         'pixel_acc': seg.get('pixel_acc'),
                         'label_change_share': seg.get('label_change_share'),
                         'wall_s': info.get('seconds')})
            gt_share[split] = seg.get('gt_label_change_share')
    for name, records in (carried or {}).items():
        runs += [r for r in records if r['split'] in ('real', 'sim')]
    methods = {}
    for name, *_ in rows:
        methods[name] = {split: split_stats(runs, name, split) for split in ('real', 'sim')}
        methods[name]['wall_s'] = _mean_std(
            [r['wall_s'] for r in runs if r['method'] == name and r['split'] == 'real'])
    return runs, methods, gt_share


def _m(methods, name, metric, split='real'):
    return methods[name][split][metric]['mean']


def _s(methods, name, metric, split='real'):
    std = methods[name][split][metric]['std']
    return std if std is not None else math.nan


def score_unseen(args, rows, runs, methods, quick):
    """Score every run's export on the unseen drives: add ``split: unseen`` runs and stats.

    Returns the split's description; the runs trained nothing new.
    """
    from analyse_depth_errors import find_exports
    from analyse_unseen_drives import render_unseen, score
    from sim2real_perception.config import load_config
    shape = QUICK_UNSEEN if quick else UNSEEN
    folder = Path(args.out) / 'data_unseen'
    spec = render_unseen(folder, shape['drives'], shape['frames_per_drive'],
                         QUICK_DATA if quick else DATA)
    exports = find_exports(compare_dir(args.out, args.sim_look) / 'runs', [r[0] for r in rows],
                           args.seeds)
    scores = score(exports, folder, 'all', load_config(args.config))
    wall = {(r['method'], r['seed']): r['wall_s'] for r in runs if r['split'] == 'real'}
    for name, by_seed in scores.items():
        for seed, figures in sorted(by_seed.items()):
            runs.append({'method': name, 'seed': seed, 'split': 'unseen',
                         **{m: figures[m] for m in METRICS},
                         'wall_s': wall.get((name, seed))})
    for name in methods:
        methods[name]['unseen'] = split_stats(runs, name, 'unseen')
    frames = next((f['frames'] for s in scores.values() for f in s.values()), 0)
    return {'root': str(folder), **shape, 'frames': frames, 'generator': spec}


def on_split(methods, split):
    """``methods`` with ``split``'s statistics in the place of the real val split's."""
    return {n: {**m, 'real': m[split]} for n, m in methods.items() if split in m}


def gap_fractions(methods):
    """Return (row - sim_only) / (oracle - sim_only) on AbsRel and mIoU (real split)."""
    out = {}
    for name in methods:
        if name in ('sim_only', 'oracle'):
            continue
        out[name] = {}
        for metric in ('abs_rel', 'miou'):
            lo, hi, me = (_m(methods, r, metric) for r in ('sim_only', 'oracle', name))
            gap = hi - lo
            ok = all(math.isfinite(v) for v in (lo, hi, me)) and abs(gap) > 1e-9
            out[name][metric] = (me - lo) / gap if ok else None
    return out


def validity(methods, trained_as=None):
    """Run the three checks that make the benchmark an instrument (issue 10).

    ``trained_as`` (row -> method): variants of the floor (method ``mean_prior``) learn
    nothing from the image, so check 1 leaves them out as it leaves out ``mean_prior``.
    """
    trained_as = trained_as or {}
    learned = [n for n in methods if n != 'mean_prior' and trained_as.get(n) != 'mean_prior']
    floor = {n: {'abs_rel': _m(methods, n, 'abs_rel') < _m(methods, 'mean_prior', 'abs_rel'),
                 'miou': _m(methods, n, 'miou') > _m(methods, 'mean_prior', 'miou')}
             for n in learned}
    # Each miss with its size and the row's seed std, so a reader can tell a miss by a
    # hair (within the seed spread) from a row that is worse than a constant.
    misses = [{'row': n, 'metric': metric, 'value': _m(methods, n, metric),
               'floor': _m(methods, 'mean_prior', metric), 'seed_std': _s(methods, n, metric)}
              for n in learned for metric in ('abs_rel', 'miou') if not floor[n][metric]]
    sep = {}
    for metric, sign in (('abs_rel', -1.0), ('miou', 1.0)):
        diff = sign * (_m(methods, 'oracle', metric) - _m(methods, 'sim_only', metric))
        spread = max(_s(methods, 'oracle', metric), _s(methods, 'sim_only', metric))
        sep[metric] = {'oracle_minus_sim_only': diff, 'larger_seed_std': spread,
                       'ok': bool(math.isfinite(spread) and diff > 3.0 * spread)}
    sim_gap = _m(methods, 'sim_only', 'miou', 'sim') - _m(methods, 'sim_only', 'miou')
    checks = {
        'every_learned_method_beats_mean_prior': {
            'per_method': floor, 'misses': misses,
            'ok': all(v['abs_rel'] and v['miou'] for v in floor.values())},
        'oracle_beats_sim_only_by_3_std': {**sep, 'ok': all(v['ok'] for v in sep.values())},
        'domain_gap_miou_sim_minus_real': {'value': sim_gap, 'ok': bool(sim_gap >= 0.05)},
    }
    checks['valid'] = all(c['ok'] for c in checks.values())
    return checks


def targets(methods, gaps, trained_as=None):
    """Return issue 10's targets with their figures (reported, not asserted).

    Adapted rows: every row but the baselines, their references (``REFERENCES``) and the
    variants of the floor and the oracle (``trained_as``: row -> method), which see real
    labels or nothing, and the rows over the budget (``OVER_BUDGET``).
    """
    trained_as = trained_as or {}
    adapted = [n for n in methods if n not in BASELINES + REFERENCES and n not in OVER_BUDGET
               and trained_as.get(n) not in ('oracle', 'mean_prior')]

    def best_of(names):
        best, best_score = None, -math.inf
        for name in names:
            g = gaps.get(name, {})
            if g.get('abs_rel') is not None and g.get('miou') is not None:
                score = min(g['abs_rel'], g['miou'])
                if score > best_score:
                    best, best_score = name, score
        return best, best_score
    best, best_score = best_of(adapted)
    floor = {m: _m(methods, 'mean_prior', m) for m in ('abs_rel', 'miou')}
    # What the main job ships: the best row whose mean also beats the floor on both metrics
    # (a row that closes more of the gap but whose depth is worse than a constant is not).
    above = [n for n in adapted if _m(methods, n, 'abs_rel') < floor['abs_rel']
             and _m(methods, n, 'miou') > floor['miou']]
    out = {'oracle_miou_ge_0.40': _m(methods, 'oracle', 'miou') >= 0.40,
           'oracle_abs_rel_le_0.15': _m(methods, 'oracle', 'abs_rel') <= 0.15,
           'best_adapted': best,
           'best_adapted_beating_floor': best_of(above)[0]}
    if best is not None:
        spread = {m: _s(methods, best, m) for m in ('abs_rel', 'miou')}
        closed = {m: abs(_m(methods, best, m) - _m(methods, 'sim_only', m))
                  for m in ('abs_rel', 'miou')}
        out['best_closes_50pct_both'] = bool(best_score >= 0.5)
        out['best_gap_fraction'] = gaps[best]
        out['best_seed_std_below_gap_closed'] = all(
            math.isfinite(spread[m]) and spread[m] < closed[m] for m in spread)
    return out


def shown_name(name):
    """Return a row's name as the tables print it: rows over the budget say so."""
    return f'{name} (over budget)' if name in OVER_BUDGET else name


def markdown(result):
    """Return the docs table: real-style split, mean ± std over seeds, gap fractions."""
    def cell(stat, digits=3):
        if not (isinstance(stat['mean'], float) and math.isfinite(stat['mean'])):
            return '-'
        std = stat['std']
        return f'{stat["mean"]:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None
                                               else '')
    lines = ['| row | AbsRel (real) | mIoU (real) | PixAcc (real) | LblChg (real) | '
             'mIoU (sim val) | gap closed AbsRel / mIoU | train s/run |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    for name, stats in result['methods'].items():
        gap = gap_cell(result['gap_closed'].get(name, {}))
        lines.append(f'| {shown_name(name)} | {cell(stats["real"]["abs_rel"])} | '
                     f'{cell(stats["real"]["miou"])} | {cell(stats["real"]["pixel_acc"])} | '
                     f'{cell(stats["real"]["label_change_share"])} | '
                     f'{cell(stats["sim"]["miou"]) if "sim" in stats else "-"} | {gap} | '
                     f'{cell(stats["wall_s"], 0)} |')
    gt = result['gt_label_change_share']
    lines += ['', f'Ground truth label-change share: real {gt.get("real", math.nan):.3f}, '
              f'sim {gt.get("sim", math.nan):.3f}.', '']
    lines.append('Validity: ' + validity_line(result['validity']))
    reused = result.get('reused')
    if reused:
        lines += ['', f'Carried over from {reused["from"]} ({reused["created"]}; the same '
                  'row definitions, preset and data), not trained again: '
                  + ', '.join(reused['rows']) + '.']
    unseen = result.get('unseen_drives')
    if unseen:
        lines += ['', f'Unseen drives: {unseen["frames"]} frames of {unseen["drives"]} '
                  'real-style drives no run trained on (the val split is the last metres of '
                  "the oracle's training drives):", '',
                  '| row | AbsRel (unseen) | mIoU (unseen) | PixAcc (unseen) | '
                  'LblChg (unseen) | gap closed AbsRel / mIoU |', '|---|---:|---:|---:|---:|---:|']
        for name, stats in result['methods'].items():
            if 'unseen' not in stats:
                continue
            u = stats['unseen']
            lines.append(f'| {shown_name(name)} | {cell(u["abs_rel"])} | {cell(u["miou"])} | '
                         f'{cell(u["pixel_acc"])} | {cell(u["label_change_share"])} | '
                         f'{gap_cell(unseen["gap_closed"].get(name, {}))} |')
        lines += ['', 'Validity (unseen drives): ' + validity_line(unseen['validity'])]
    return '\n'.join(lines) + '\n'


def gap_cell(g):
    """'77% / 42%' from a row's gap fractions ('-' where none)."""
    if not g:
        return '-'
    return ' / '.join('-' if g.get(m) is None else f'{g[m]:.0%}' for m in ('abs_rel', 'miou'))


def validity_line(v):
    """The three validity checks in one line of figures and verdicts."""
    floor = v['every_learned_method_beats_mean_prior']
    misses = ', '.join(
        f'{m["row"]} {"AbsRel" if m["metric"] == "abs_rel" else "mIoU"} '
        f'{m["value"]:.4f} vs {m["floor"]:.4f}'
        + (f' (seed std {m["seed_std"]:.4f})' if math.isfinite(m['seed_std']) else '')
        for m in floor.get('misses', []))
    return '; '.join([
        'every learned row beats mean_prior: '
        + ('yes' if floor['ok'] else f'NO ({misses})' if misses else 'NO'),
        'oracle - sim_only vs 3 x larger std: AbsRel '
        f'{v["oracle_beats_sim_only_by_3_std"]["abs_rel"]["oracle_minus_sim_only"]:.3f} vs '
        f'{3 * v["oracle_beats_sim_only_by_3_std"]["abs_rel"]["larger_seed_std"]:.3f}, mIoU '
        f'{v["oracle_beats_sim_only_by_3_std"]["miou"]["oracle_minus_sim_only"]:.3f} vs '
        f'{3 * v["oracle_beats_sim_only_by_3_std"]["miou"]["larger_seed_std"]:.3f} ('
        + ('ok' if v['oracle_beats_sim_only_by_3_std']['ok'] else 'FAILS') + ')',
        'domain gap (sim_only mIoU sim - real) '
        f'{v["domain_gap_miou_sim_minus_real"]["value"]:.3f} >= 0.05 ('
        + ('ok' if v['domain_gap_miou_sim_minus_real']['ok'] else 'FAILS') + ')']) + '.'


def monitor_curve(csv_text):
    """{step: (AbsRel, mIoU)} of one run's monitor.csv, its stages laid end to end.

    Each stage counts its steps from 1, so a later stage (self-training after the supervised
    steps) starts where the one before it ended; a (stage, step) logged twice keeps its last
    value (a run resumed from copied logs).
    """
    rows, ends = {}, {}
    for line in csv_text.splitlines()[1:]:
        stage, step, abs_rel, miou = line.split(',')
        ends[stage] = max(ends.get(stage, 0), int(step))
        if abs_rel and miou:
            rows[(stage, int(step))] = (float(abs_rel), float(miou))
    offset, start = 0, {}
    for stage in ends:   # in the order the stages first appear
        start[stage] = offset
        offset += ends[stage]
    return {start[stage] + step: value for (stage, step), value in rows.items()}


def curves(out, rows, path, seeds, sim_look='flat'):
    """Plot AbsRel and mIoU on the monitor frames against the step for the curve rows."""
    from training.figures import line_plot
    series = {}
    for name in rows:
        by_step = {}
        for seed in seeds:
            csv = compare_dir(out, sim_look) / 'runs' / f'{name}_s{seed}' / 'logs' / 'monitor.csv'
            if csv.is_file():
                for step, value in monitor_curve(csv.read_text()).items():
                    by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            series[name] = (steps, [sum(v[0] for v in by_step[s]) / len(by_step[s])
                                    for s in steps],
                            [sum(v[1] for v in by_step[s]) / len(by_step[s]) for s in steps])
    if not series:
        return None
    return line_plot(path, {n: (s[0], s[1]) for n, s in series.items()},
                     {n: (s[0], s[2]) for n, s in series.items()},
                     ('AbsRel (lower is better)', 'mIoU (higher is better)'),
                     'training step (head training, then self-training)')


def main(argv=None):
    """Run the benchmark; exit 0 when it ran (validity is reported, not an exit status)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    wanted = args.rows or DEFAULT_ROWS
    rows = [r for r in ROWS if r[0] in wanted]
    for needed in BASELINES:
        if needed not in [r[0] for r in rows]:
            rows.insert(0, next(r for r in ROWS if r[0] == needed))
    rows.sort(key=lambda r: [x[0] for x in ROWS].index(r[0]))
    spec = dict(QUICK_DATA if args.quick else DATA)
    if args.quick:
        args.config = 'test'
    t0 = time.perf_counter()
    data_dir = make_data(args.out, spec)
    rows = with_sim_roots(args.out, spec, with_sim_look(rows, args.sim_look))
    splits = ('real', 'sim') if args.no_unseen else ('real', 'sim', 'unseen')
    carried, prev = ({}, {}) if not args.reuse or args.retrain else reusable_runs(
        args.reuse, rows, args.seeds, splits, args.config, spec, args.out, args.sim_look)
    trained = [r for r in rows if r[0] not in carried]
    report = {}
    if trained:
        for seed in args.seeds[:-1]:   # seed by seed, so a partial run already holds results
            if args.retrain or not all_finished(args.out, trained, seed, args.sim_look):
                run_rows(args, data_dir, trained, [seed])
        report = run_rows(args, data_dir, trained, args.seeds)
    runs, methods, gt_share = collect(report, rows, carried)
    gt_share = gt_share or prev.get('gt_label_change_share', {})
    gaps = gap_fractions(methods)
    trained_as = {r[0]: r[1] for r in rows}
    unseen = None
    if not args.no_unseen:
        runs += [r for records in carried.values() for r in records if r['split'] == 'unseen']
        if trained:
            unseen = score_unseen(args, trained, runs, methods, args.quick)
        else:
            unseen = {k: v for k, v in (prev.get('unseen_drives') or {}).items()
                      if k not in ('gap_closed', 'validity', 'targets')}
            for name in methods:
                methods[name]['unseen'] = split_stats(runs, name, 'unseen')
        view = on_split(methods, 'unseen')
        unseen_gaps = gap_fractions(view)
        unseen.update({'gap_closed': unseen_gaps, 'validity': validity(view, trained_as),
                       'targets': targets(view, unseen_gaps, trained_as)})
    result = {
        'created': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
        'machine': {'cpu': platform.processor() or platform.machine(), **cpu_model(),
                    'cpu_count': os.cpu_count(), 'torch_threads': os.environ.get(
                        'OMP_NUM_THREADS', 'default'), 'loadavg_start': os.getloadavg()[0]},
        'config': args.config, 'data': spec, 'sim_look': args.sim_look, 'seeds': args.seeds,
        'rows': {r[0]: {'method': r[1], 'overrides': r[2], 'what': r[3]} for r in rows},
        'budget': _budget(args.config),
        'runs': runs, 'methods': methods, 'gap_closed': gaps,
        'gt_label_change_share': gt_share,
        'validity': validity(methods, trained_as),
        'targets': targets(methods, gaps, trained_as),
        'unseen_drives': unseen,
        'reused': {'from': str(args.reuse), 'created': prev.get('created'),
                   'rows': sorted(carried)} if carried else None,
        'total_s': time.perf_counter() - t0,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    stem = 'bench_transfer_quick' if args.quick else 'bench_transfer'
    best = result['targets'].get('best_adapted')
    shipped = result['targets'].get('best_adapted_beating_floor')
    shown = dict.fromkeys(n for n in ('sim_only', 'oracle', best, shipped, 'twin_vae')
                          if n and n in result['rows'])   # and the twin-VAE default
    if any(n in carried for n in shown):   # their logs are not here: keep the old figure
        result['curves_png'] = prev.get('curves_png')
    else:
        fig = curves(args.out, list(shown), results / f'{stem}_curves.png', args.seeds,
                     args.sim_look)
        result['curves_png'] = str(fig) if fig else None
    (results / f'{stem}.json').write_text(json.dumps(result, indent=1, default=str))
    (results / f'{stem}.md').write_text(markdown(result))
    print(markdown(result))
    print('targets:', json.dumps(result['targets'], default=str))
    print(f'wrote {results / (stem + ".json")} ({result["total_s"] / 60:.1f} min)')
    return 0


def cpu_model():
    """Return the CPU's model name and whether it has AVX-512 (Linux; {} elsewhere).

    Float rounding differs between CPUs, so a run's figures are only bit-reproducible on
    the same kind of CPU; the results say which one made them.
    """
    try:
        text = Path('/proc/cpuinfo').read_text()
    except OSError:
        return {}
    fields = dict(line.split(':', 1) for line in text.splitlines() if ':' in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {'cpu_model': fields.get('model name'),
            'avx512': 'avx512f' in fields.get('flags', '').split()}


def _budget(config):
    from sim2real_perception.config import load_config
    t = load_config(config)['train']
    return {k: t[k] for k in ('batch_size', 'stage1_steps', 'stage2_steps', 'supervised_steps',
                              'lr')}


if __name__ == '__main__':
    sys.exit(main())

"""Loss terms of the paper (eqs 1-20) and the per-stage totals built from them.

Conventions (all terms are means, so weights do not depend on image or latent size):

* KL: the encoders follow UNIT (q(z|x) = N(mu, I)), so KL(q || N(0, I)) = 0.5 * ||mu||^2
  per sample exactly (the log-variance terms cancel). ``kl_unit`` returns 0.5 * mean(mu^2)
  over all latent elements, i.e. the KL divided by the latent size. The likelihood part of
  eqs 2-3 (-E log p(x|z)) is the reconstruction of eqs 4-5 and is counted there once.
* MMD against the prior (eqs 6-7): the closed form for a Gaussian kernel and a N(0, I_d)
  prior (Rustamov 2019), so no prior samples are drawn and the estimate has no extra noise;
  latents are flattened (d = C*h*w) and the kernel width is gamma^2 = gamma_scale * d.
* Two-sample MMD (eqs 13-14): the unbiased U-statistic between two batches of latents.
* Depth (eqs 15-16): MSE between the tanh output and the encoded target on valid pixels only
  (0 / NaN = no measurement; +inf = far/sky, encoded as max_depth; optionally every pixel
  labelled sky is far too).
* Cross entropy (eqs 18-19): mean over pixels that are not the ignore index 255.

Every term stays differentiable: only the self-training targets (``pseudo_terms``) are
computed under ``torch.no_grad``, as targets.
"""
import math

import torch
import torch.nn.functional as F

from sim2real_perception.labels import CLASS_NAMES, IGNORE_INDEX
from sim2real_perception.model.depth_coding import encode_depth

SKY_CLASS = CLASS_NAMES.index('sky')

#: Stage-1 terms (eq. 10 with its typos fixed: all eight functions) and their meaning.
STAGE1_TERMS = {
    'kl_real': 'eq 2: KL of q(z_R|x_R) to N(0, I)',
    'kl_sim': 'eq 3: KL of q(z_S|x_S) to N(0, I)',
    'recon_real': 'eq 4: MSE of G_R(E_R(x_R)) to x_R',
    'recon_sim': 'eq 5: MSE of G_S(E_S(x_S)) to x_S',
    'mmd_real': 'eq 6: MMD of z_R to N(0, I)',
    'mmd_sim': 'eq 7: MMD of z_S to N(0, I)',
    'cycle_real': 'eq 8: L1 of G_R(E_S(G_S(E_R(x_R)))) to x_R',
    'cycle_sim': 'eq 9: L1 of G_S(E_R(G_R(E_S(x_S)))) to x_S',
}
#: Stage-2 terms (eqs 11-20; the KL and MMD terms are shared by eqs 17 and 20).
STAGE2_TERMS = {
    's2_kl_real': "eq 11: KL of z'_R = E_R(G_R(z_S)) to N(0, I)",
    's2_kl_sim': 'eq 12: KL of z_S to N(0, I)',
    's2_mmd_s2r': "eq 13: MMD between z_S and z'_R",
    's2_mmd_r2s': "eq 14: MMD between z'_S = E_S(G_S(z_R)) and z_R",
    'depth_sim': 'eq 15: depth MSE of G_D(E_S(x_S))',
    'depth_real': "eq 16: depth MSE of G_D(E_R(x'_R))",
    'ce_sim': 'eq 18: cross entropy of G_I(E_S(x_S))',
    'ce_real': "eq 19: cross entropy of G_I(E_R(x'_R))",
    's2_adv': 'beyond the paper: adversarial alignment of shared real/sim features (critic)',
    's2_pseudo_ce': 'beyond the paper: cross entropy of G_I(E_R(strong(x_R))) to the '
                    'confident labels of G_I(E_R(x_R)) (self-training on real frames)',
    's2_pseudo_depth': 'beyond the paper: L1 of G_D(E_R(strong(x_R))) to G_D(E_R(x_R)) '
                       '(encoded depth, consistency on real frames)',
}
#: Baselines (sim_only, oracle): one encoder + the two heads on one labelled domain.
SUPERVISED_TERMS = {
    'depth': 'depth MSE of G_D(E_R(x)) on labelled frames',
    'ce': 'cross entropy of G_I(E_R(x)) on labelled frames',
}
#: sim_only's self-training stage (training/self_training.py): the sim terms plus the real one.
SELF_TRAIN_TERMS = {
    **SUPERVISED_TERMS,
    'self_train_ce': 'beyond the paper: cross entropy of G_I(E_R(strong(x_R))) to the '
                     "network's class-balanced confident labels of x_R, made once",
    'self_train_depth': 'beyond the paper: depth error of G_D(E_R(strong(x_R))) on the sim '
                        'objects pasted into x_R, to their sim depth',
}


def _zero_like(t):
    """Return a zero that keeps ``t`` in the autograd graph (so backward never fails)."""
    return t.sum() * 0.0


def kl_unit(mu):
    """KL(N(mu, I) || N(0, I)) per latent element: 0.5 * mean(mu^2) (UNIT's KL)."""
    return 0.5 * mu.float().pow(2).mean()


def recon_mse(x_hat, x):
    """Mean squared reconstruction error (eqs 4-5)."""
    return F.mse_loss(x_hat.float(), x.float())


def cycle_l1(x_cyc, x):
    """Mean absolute cycle-consistency error (eqs 8-9)."""
    return F.l1_loss(x_cyc.float(), x.float())


def _flat(z):
    return z.float().reshape(z.shape[0], -1)


def _gamma2(d, gamma_scale):
    return float(gamma_scale) * d


def mmd_prior(z, gamma_scale=1.0):
    """Closed-form MMD^2 of a batch of latents against N(0, I_d), Gaussian kernel.

    k(x, y) = exp(-||x - y||^2 / (2 gamma^2)), gamma^2 = gamma_scale * d. The sample-sample
    part is the unbiased (i != j) mean; the cross and prior-prior parts are exact
    expectations under N(0, I_d), evaluated in log space so large d does not underflow.
    Needs at least two samples (returns a graph-connected zero otherwise).
    """
    x = _flat(z)
    n, d = x.shape
    if n < 2:
        return _zero_like(x)
    g2 = _gamma2(d, gamma_scale)
    sq = torch.cdist(x, x).pow(2)
    off = ~torch.eye(n, dtype=torch.bool, device=x.device)
    k_xx = torch.exp(-sq[off] / (2.0 * g2)).mean()
    log_c1 = 0.5 * d * math.log(g2 / (1.0 + g2))
    k_xp = torch.exp(log_c1 - x.pow(2).sum(1) / (2.0 * (1.0 + g2))).mean()
    k_pp = math.exp(0.5 * d * math.log(g2 / (2.0 + g2)))
    return k_xx - 2.0 * k_xp + k_pp


def mmd_two_sample(a, b, gamma_scale=1.0):
    """Unbiased MMD^2 between two batches of latents (eqs 13-14), same kernel as above."""
    x, y = _flat(a), _flat(b)
    n, m, d = x.shape[0], y.shape[0], x.shape[1]
    if n < 2 or m < 2:
        return _zero_like(x) + _zero_like(y)
    g2 = _gamma2(d, gamma_scale)

    def k(p, q):
        return torch.exp(-torch.cdist(p, q).pow(2) / (2.0 * g2))

    off_x = ~torch.eye(n, dtype=torch.bool, device=x.device)
    off_y = ~torch.eye(m, dtype=torch.bool, device=y.device)
    return k(x, x)[off_x].mean() + k(y, y)[off_y].mean() - 2.0 * k(x, y).mean()


def depth_targets(depth, model_cfg, labels=None, sky_as_far=True):
    """Return encoded depth targets and the valid mask for metric depth (Bx1xHxW m).

    Valid: finite depth > 0, or +inf (far/sky, encoded as max_depth); 0, negative and NaN
    are "no measurement". With ``sky_as_far`` every pixel labelled sky is valid and far.
    """
    depth = depth.float()
    valid = (depth > 0) & ~torch.isnan(depth)          # +inf > 0 is True: far is valid
    far = torch.isposinf(depth)
    if sky_as_far and labels is not None:
        sky = (labels == SKY_CLASS).unsqueeze(1)
        far = far | sky
        valid = valid | sky
    metres = torch.where(far, torch.full_like(depth, float(model_cfg.max_depth)),
                         torch.where(valid, depth, torch.ones_like(depth)))
    target = encode_depth(metres, model_cfg.depth_encoding, model_cfg.min_depth,
                          model_cfg.max_depth)
    return target, valid


#: Norms of the depth error: l2 (the paper's MSE, eqs 15-16) | l1 (beyond the paper).
DEPTH_NORMS = ('l2', 'l1')


def depth_loss(pred, depth, model_cfg, labels=None, sample_mask=None, sky_as_far=True,
               norm='l2', weight=None):
    """Masked MSE (or L1) between tanh outputs and encoded targets over valid pixels.

    ``sample_mask`` (B bools, e.g. ``has_depth``) drops whole frames without depth. ``l1``
    on log depth is a relative error like AbsRel, and lets no pixel (a sky edge taken for a
    tree top: a code error near 1) outweigh a thousand small ones, as its square does.
    ``weight`` (per class, beyond the paper: ``loss.depth_class_balance``) weighs each pixel
    by its label's weight (unlabelled pixels weigh 1) in a weighted mean, so the thin
    objects a per-pixel mean hardly sees (cars, poles) get their depth learnt.
    """
    check_depth_norm(norm)
    target, valid = depth_targets(depth, model_cfg, labels, sky_as_far)
    if sample_mask is not None:
        valid = valid & sample_mask.to(valid.device).view(-1, 1, 1, 1).bool()
    pred = pred.float()
    if not bool(valid.any()):
        return _zero_like(pred)
    err = depth_error(pred - target, norm)[valid]
    if weight is None or labels is None:
        return err.mean()
    w = pixel_weights(labels, weight).unsqueeze(1).expand_as(valid)[valid]
    return (w * err).sum() / w.sum()


def check_depth_norm(norm):
    """Refuse a ``loss.depth_norm`` that is not one of ``DEPTH_NORMS``."""
    if norm not in DEPTH_NORMS:
        raise ValueError(f'loss.depth_norm={norm!r} not in {DEPTH_NORMS}')


def depth_error(diff, norm):
    """Per-pixel error of an encoded-depth difference: squared (l2) or absolute (l1)."""
    return diff.abs() if norm == 'l1' else diff.pow(2)


def pixel_weights(labels, weight):
    """Each pixel's class weight (``weight[label]``); unlabelled pixels weigh 1."""
    weight = weight.to(labels.device, torch.float32)
    known = labels < weight.numel()
    return torch.where(known, weight[labels.clamp(0, weight.numel() - 1)],
                       torch.ones_like(labels, dtype=torch.float32))


def seg_loss(logits, labels, sample_mask=None, weight=None):
    """Pixel-wise cross entropy, ignoring label 255 (eqs 18-19); zero if nothing is labelled.

    ``weight`` (per class, beyond the paper: ``class_balance_weights``) weighs each pixel by
    its target class; the mean is over the weights, as ``F.cross_entropy`` takes it.
    """
    if sample_mask is not None:
        keep = sample_mask.to(labels.device).view(-1, 1, 1).bool()
        labels = torch.where(keep, labels, torch.full_like(labels, IGNORE_INDEX))
    logits = logits.float()
    if not bool((labels != IGNORE_INDEX).any()):
        return _zero_like(logits)
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX,
                           weight=None if weight is None else weight.to(logits))


def class_balance_weights(pixel_counts, power):
    """Per-class cross-entropy weights ``share ** -power``, their pixel-weighted mean 1.

    At power 0.5 (the square root of the inverse frequency) a class with 1 % of the pixels
    weighs 10x one with 100 %: thin classes (cars, poles, guard rails) get gradient in a
    short training without drowning the large ones. Classes without pixels weigh 0 (they
    are never a target).
    """
    counts = torch.as_tensor(pixel_counts, dtype=torch.float64)
    if float(power) < 0 or not bool((counts >= 0).all()) or float(counts.sum()) <= 0:
        raise ValueError(f'class balance needs labelled pixels and power >= 0 (power {power})')
    share = counts / counts.sum()
    w = torch.where(share > 0, share.clamp_min(1e-12).pow(-float(power)),
                    torch.zeros_like(share))
    return (w / (share * w).sum()).float()


def strong_view(x, strength=1.0):
    """Re-render a batch in [-1, 1] with a random camera: the student's view of a real frame.

    Per frame: channel gains, exposure (gamma), saturation and sensor noise (torch's RNG, so
    a resumed run draws the same). Geometry is untouched, so the clean view's predictions
    are pixel-aligned targets (FixMatch's weak/strong pair, photometric only).
    """
    s = float(strength)
    n = x.shape[0]
    u = ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0)
    gains = 1.0 + 0.12 * s * torch.randn(n, 3, 1, 1, device=x.device)
    gamma = torch.exp(0.3 * s * torch.randn(n, 1, 1, 1, device=x.device))
    u = (u * gains).clamp(1e-4, 1.0) ** gamma
    grey = (u * u.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    sat = 1.0 + s * (torch.rand(n, 1, 1, 1, device=x.device) - 0.6)
    u = grey + (u - grey) * sat
    u = u + torch.rand(n, 1, 1, 1, device=x.device) * 0.04 * s * torch.randn_like(u)
    return (u.clamp(0.0, 1.0) * 2.0 - 1.0).to(x.dtype)


#: What the self-training view is: the strong view of each real frame (none), or that view
#: with half of a sim frame's classes pasted in (classmix: DACS's cross-domain ClassMix).
PSEUDO_MIXES = ('none', 'classmix')


def class_mix_mask(labels, has_labels=None):
    """Per frame, the pixels of a random half (rounded up) of the classes in its labels.

    ClassMix's mask: whole objects and regions, so the pasted pixels keep their context and
    their labels are exact. Frames without labels (``has_labels`` False) paste nothing.
    Draws from torch's RNG, so a resumed run draws the same.
    """
    masks = []
    for i, lab in enumerate(labels):
        classes = torch.unique(lab)
        classes = classes[classes != IGNORE_INDEX]
        if has_labels is not None and not bool(has_labels[i]):
            classes = classes[:0]
        pick = classes[torch.randperm(classes.numel(), device=lab.device)[
            :(classes.numel() + 1) // 2]]
        masks.append(torch.isin(lab, pick))
    return torch.stack(masks)


def pseudo_terms(net, x_real, mu_r, f_r, threshold=0.9, strength=1.0, labels=True,
                 depth=True, mix=None, teacher=None):
    """Self-training on unlabelled real frames: (cross entropy, depth L1) of a strong view.

    The targets are the network's own predictions on the clean view (no gradient): labels
    where the softmax is at least ``threshold`` (the rest ignored, and the mean runs over
    every pixel, so the term grows as the network becomes sure) and the encoded depth.
    ``labels`` / ``depth`` False skip that head (its term is a graph-connected 0).
    ``mix`` (``{'image', 'labels', 'has_labels', 'depth'}`` of the paired sim batch, its
    ``depth`` the network's own encoded depth of it) pastes half of each sim frame's classes
    into the strong view: there the targets are the sim labels (always counted) and that
    depth, so every mixed frame also carries exact labels in a real-looking context.
    ``teacher`` (a network, or None: ``net`` itself) makes the clean-view targets its own:
    the EMA teacher of ``training.teacher``.
    """
    with torch.no_grad():   # the clean view first: the order of the runs measured with it
        if teacher is not None:
            mu_r, _, f_r = teacher.encode_skips(x_real, 'real')
        src = net if teacher is None else teacher
        t_depth = src.decode(mu_r, 'depth', f_r).float() if depth else None
        conf, target = torch.softmax(src.decode(mu_r, 'seg', f_r).float(), 1).max(1) \
            if labels else (None, None)
    view = strong_view(x_real, strength)
    keep = (conf >= float(threshold)).float() if labels else None
    if mix is not None:
        n = min(view.shape[0], mix['image'].shape[0])
        m = class_mix_mask(mix['labels'][:n], mix.get('has_labels'))
        if n < view.shape[0]:   # an unpaired last real frame keeps its plain strong view
            m = torch.cat([m, m.new_zeros((view.shape[0] - n, *m.shape[1:]))])
        sim_img = torch.cat([mix['image'][:n].to(view.dtype), view[n:]])
        view = torch.where(m[:, None], sim_img, view)
        if labels:
            sim_lab = torch.cat([mix['labels'][:n], target[n:]])
            target = torch.where(m, sim_lab, target)
            keep = torch.where(m, torch.ones_like(keep), keep)
        if depth:
            sim_d = torch.cat([mix['depth'][:n].detach().float(), t_depth[n:]])
            t_depth = torch.where(m[:, None], sim_d, t_depth)
    _, z_a, f_a = net.encode_skips(view, 'real')
    ce = loss_depth = _zero_like(z_a)
    if labels:   # targets are argmax labels or pasted classes, never IGNORE_INDEX
        ce = F.cross_entropy(net.decode(z_a, 'seg', f_a).float(), target, reduction='none')
        ce = (ce * keep).mean()
    if depth:
        loss_depth = (net.decode(z_a, 'depth', f_a).float() - t_depth).abs().mean()
    return ce, loss_depth


def weighted_total(terms, weights):
    """Return (total, weighted terms): each term times ``weights[name]`` (a loss.* value)."""
    weighted = {name: float(weights[name]) * value for name, value in terms.items()}
    total = sum(weighted.values())
    return total, weighted


def stage1_terms(net, x_real, x_sim, gamma_scale=1.0, mmd_on='mu'):
    """Compute the eight stage-1 terms (eq. 10) for unpaired real and sim images.

    ``mmd_on`` picks what eqs 6-7 compare with the prior: ``mu`` (the encoder means) or
    ``z`` (mu + unit noise, whose aggregate covariance is at least I + Cov(mu), so it can
    only match N(0, I) when the means collapse). Returns (terms, images for the grid).
    """
    mu_r, z_r = net.encode(x_real, 'real')
    mu_s, z_s = net.encode(x_sim, 'sim')
    rec_r, rec_s = net.decode(z_r, 'real'), net.decode(z_s, 'sim')
    r2s, s2r = net.decode(z_r, 'sim'), net.decode(z_s, 'real')
    _, z_r2s = net.encode(r2s, 'sim')
    _, z_s2r = net.encode(s2r, 'real')
    cyc_r, cyc_s = net.decode(z_r2s, 'real'), net.decode(z_s2r, 'sim')
    m_r, m_s = (mu_r, mu_s) if mmd_on == 'mu' else (z_r, z_s)
    terms = {
        'kl_real': kl_unit(mu_r),
        'kl_sim': kl_unit(mu_s),
        'recon_real': recon_mse(rec_r, x_real),
        'recon_sim': recon_mse(rec_s, x_sim),
        'mmd_real': mmd_prior(m_r, gamma_scale),
        'mmd_sim': mmd_prior(m_s, gamma_scale),
        'cycle_real': cycle_l1(cyc_r, x_real),
        'cycle_sim': cycle_l1(cyc_s, x_sim),
    }
    images = {'real': x_real, 'real_recon': rec_r, 'real_to_sim': r2s,
              'sim': x_sim, 'sim_recon': rec_s, 'sim_to_real': s2r}
    return terms, images


#: What the real encoder reads in eqs 11, 13, 16 and 19: the paper's translation
#: x'_R = G_R(z_S), or the (appearance-randomised) sim frame itself.
REAL_INPUTS = ('translated', 'sim')


#: What the stage-2 heads decode in training (``loss.heads_on``).
HEADS_ON = ('z', 'mu')


def _mean_or_sample(which):
    """Return ``f(mu, z)`` giving ``mu`` for 'mu' and the sample ``z`` otherwise."""
    return (lambda mu, z: mu) if which == 'mu' else (lambda mu, z: z)


def stage2_terms(net, sim_batch, x_real, model_cfg, gamma_scale=1.0, mmd_on='mu',
                 sky_as_far=True, real_input='translated', lean=False, pseudo=None,
                 depth_norm='l2', sim_encoder=True, source_only=False, ce_weight=None,
                 heads_on='z'):
    """Compute the stage-2 terms (eqs 11-20) for paired sim and unpaired real images.

    x'_R = G_R(z_S), z'_R = E_R(x'_R); x'_S = G_S(z_R), z'_S = E_S(x'_S). Depth and
    segmentation are supervised on G_D/G_I(E_S(x_S)) and G_D/G_I(E_R(x'_R)) with the sim
    ground truth (x'_R is x_S rendered in the real style, pixel-aligned with it). With
    ``real_input='sim'`` (beyond the paper) x'_R is x_S itself. ``lean`` (beyond the
    paper) skips what the deployed path never uses, the heads on E_S (eqs 15, 18) and the
    x'_S path (eq 14): those terms are 0 and cost nothing. The critic, if any, compares the
    real encoder's features of x'_R with those of x_R: what it trains on with what it sees.
    ``pseudo`` (beyond the paper; ``{'threshold', 'strength', 'labels', 'depth', 'mix',
    'teacher'}``, or None: off, both terms 0) adds self-training on the real frames
    (``pseudo_terms``).
    ``depth_norm`` is ``depth_loss``'s ``norm``. ``sim_encoder=False`` (lean, sim input
    only) skips E_S altogether: eqs 12-13 are then 0, and nothing else reads it.
    ``source_only`` (``train.stage2_source_steps``) keeps only eqs 16 and 19 on the sim
    frames: the heads learn the sim labels before anything aligns, as UDA methods start
    from a source-trained network; every other term is 0 and costs nothing.
    ``heads_on`` (``loss.heads_on``): the heads decode ``z`` (mu + unit noise) or ``mu``.
    """
    if heads_on not in HEADS_ON:
        raise ValueError(f'loss.heads_on={heads_on!r} not in {HEADS_ON}')
    head = _mean_or_sample(heads_on)
    if source_only:
        return _source_terms(net, sim_batch, model_cfg, sky_as_far, depth_norm, ce_weight)
    x_sim = sim_batch['image']
    depth, labels = sim_batch['depth'], sim_batch['labels']
    has_d, has_l = sim_batch.get('has_depth'), sim_batch.get('has_labels')
    if real_input not in REAL_INPUTS:
        raise ValueError(f'train.stage2_real_input={real_input!r} not in {REAL_INPUTS}')
    if not sim_encoder and not (lean and real_input == 'sim'):
        raise ValueError('stage 2 needs E_S unless it is lean with the sim frames for E_R')
    mu_s, z_s, f_s = net.encode_skips(x_sim, 'sim') if sim_encoder else (None, None, None)
    # At a small budget G_R(z_S) is a blur of the scene (everything passes a 2x4 latent),
    # so 'sim' feeds the sim frame itself to E_R: the heads learn the real encoder's path
    # on aligned pixels, and the latent terms and the critic do the aligning.
    x_r_fake = net.decode(z_s, 'real') if real_input == 'translated' else x_sim
    mu_r_fake, z_r_fake, f_r_fake = net.encode_skips(x_r_fake, 'real')
    mu_r, z_r, f_r = net.encode_skips(x_real, 'real')
    pick = _mean_or_sample(mmd_on)
    d_real, s_real = net.decode_heads(head(mu_r_fake, z_r_fake), f_r_fake)
    terms = {
        's2_kl_real': kl_unit(mu_r_fake),
        's2_kl_sim': kl_unit(mu_s) if sim_encoder else _zero_like(mu_r_fake),
        's2_mmd_s2r': mmd_two_sample(pick(mu_s, z_s), pick(mu_r_fake, z_r_fake), gamma_scale)
        if sim_encoder else _zero_like(mu_r_fake),
        'depth_real': depth_loss(d_real, depth, model_cfg, labels, has_d, sky_as_far,
                                 depth_norm),
        'ce_real': seg_loss(s_real, labels, has_l, ce_weight),
        's2_adv': _critic_term(net, model_cfg, (mu_r_fake, f_r_fake), (mu_r, f_r)),
    }
    if pseudo:
        mix = pseudo.get('mix', 'none')
        if mix not in PSEUDO_MIXES:
            raise ValueError(f'loss.pseudo_mix={mix!r} not in {PSEUDO_MIXES}')
        terms['s2_pseudo_ce'], terms['s2_pseudo_depth'] = pseudo_terms(
            net, x_real, mu_r, f_r, pseudo['threshold'], pseudo['strength'],
            pseudo.get('labels', True), pseudo.get('depth', True),
            {'image': x_r_fake, 'labels': labels, 'has_labels': has_l, 'depth': d_real}
            if mix == 'classmix' else None, pseudo.get('teacher'))
    else:
        terms['s2_pseudo_ce'] = terms['s2_pseudo_depth'] = _zero_like(mu_r)
    if lean:
        zero = _zero_like(mu_r)
        terms.update(s2_mmd_r2s=zero, depth_sim=zero, ce_sim=zero)
        d_show, s_show = d_real, s_real
    else:
        x_s_fake = net.decode(z_r, 'sim')
        mu_s_fake, z_s_fake = net.encode(x_s_fake, 'sim')
        d_show, s_show = net.decode_heads(head(mu_s, z_s), f_s)
        terms.update(
            s2_mmd_r2s=mmd_two_sample(pick(mu_s_fake, z_s_fake), pick(mu_r, z_r), gamma_scale),
            depth_sim=depth_loss(d_show, depth, model_cfg, labels, has_d, sky_as_far,
                                 depth_norm),
            ce_sim=seg_loss(s_show, labels, has_l, ce_weight))
    terms = {k: terms[k] for k in STAGE2_TERMS}   # the documented order
    images = {'sim': x_sim, 'sim_to_real': x_r_fake, 'depth_pred': d_show, 'seg_pred': s_show,
              'depth': depth, 'labels': labels}
    return terms, images


def _source_terms(net, sim_batch, model_cfg, sky_as_far, depth_norm, ce_weight=None):
    """Stage-2 terms of a source-only step: E_R and the heads supervised on sim frames."""
    sup, images = supervised_terms(net, sim_batch, model_cfg, sky_as_far, depth_norm,
                                   ce_weight)
    zero = _zero_like(sup['ce'])
    terms = dict.fromkeys(STAGE2_TERMS, zero)
    terms.update(depth_real=sup['depth'], ce_real=sup['ce'])
    images = {'sim': images['image'], 'sim_to_real': images['image'],
              'depth_pred': images['depth_pred'], 'seg_pred': images['seg_pred'],
              'depth': images['depth'], 'labels': images['labels']}
    return terms, images


def _critic_term(net, model_cfg, sim, real):
    """Return the critic's loss on (latent, skips) of sim and real; 0 without a critic."""
    critic = getattr(net, 'critic', None)
    if critic is None:
        return _zero_like(sim[0])
    from .critic import adversarial_loss, critic_scale
    scale = critic_scale(model_cfg)
    if scale is None:
        return adversarial_loss(critic, sim[0], real[0])
    return adversarial_loss(critic, sim[1][scale], real[1][scale])


def supervised_terms(net, batch, model_cfg, sky_as_far=True, depth_norm='l2', ce_weight=None,
                     depth_weight=None):
    """Baseline terms: real encoder + heads supervised directly on one labelled domain."""
    x = batch['image']
    _, z, feats = net.encode_skips(x, 'real')
    d, s = net.decode_heads(z, feats)
    terms = {
        'depth': depth_loss(d, batch['depth'], model_cfg, batch['labels'],
                            batch.get('has_depth'), sky_as_far, depth_norm, depth_weight),
        'ce': seg_loss(s, batch['labels'], batch.get('has_labels'), ce_weight),
    }
    images = {'image': x, 'depth_pred': d, 'seg_pred': s, 'depth': batch['depth'],
              'labels': batch['labels']}
    return terms, images


def self_train_terms(net, sim_batch, real_batch, model_cfg, sky_as_far=True, depth_norm='l2',
                     strength=1.0, paste=(), sim_terms=True, paste_depth=False):
    """Self-training stage terms: the sim supervision and the real frames' fixed labels.

    The real frames are re-rendered (``strong_view``) so the network must give the labels it
    gave the clean frame to a differently photographed one; the mean runs over kept pixels.
    ``paste`` (class ids, or ``CLASSMIX``) first copies those pixels of the paired sim frame
    onto each real frame, with their sim labels (``paste_classes``). ``sim_terms`` False (or no
    ``sim_batch``) leaves the sim frames' own supervision out. ``paste_depth`` also teaches
    depth: the pasted pixels to their sim depth (the sim camera is the real one's), so the
    depth head learns objects in a real frame's context, and every other pixel to the
    network's own depth of the clean, unpasted frame (no gradient), which anchors the rest
    of the frame: without it the depth head, taught on objects only, drifts everywhere
    else. The term is the sum of the two means (``self_train_depth_terms``).
    """
    terms, images = supervised_terms(net, sim_batch, model_cfg, sky_as_far, depth_norm) \
        if sim_batch is not None and sim_terms else ({}, None)
    image, labels = real_batch['image'], real_batch['labels']
    mask = None
    if paste and sim_batch is not None:
        image, labels, mask = paste_classes(image, labels, sim_batch, paste)
    if paste_depth:
        if mask is None:
            raise ValueError('loss.self_train_depth needs pasted sim objects '
                             '(train.self_train_paste and a sim batch)')
        with torch.no_grad():
            mu, _, feats = net.encode_skips(real_batch['image'], 'real')
            anchor = net.decode(mu, 'depth', feats).float()
    view = strong_view(image, strength)
    _, z, feats = net.encode_skips(view, 'real')
    if not paste_depth:
        terms['self_train_ce'] = seg_loss(net.decode(z, 'seg', feats), labels)
        return terms, images
    d, s = net.decode_heads(z, feats)
    terms['self_train_ce'] = seg_loss(s, labels)
    terms['self_train_depth'] = self_train_depth_terms(d, anchor, sim_batch['depth'], mask,
                                                       model_cfg, depth_norm)
    return terms, images


def self_train_depth_terms(pred, anchor, sim_depth, mask, model_cfg, norm='l2'):
    """Depth error of pasted pixels to their sim depth plus that of the rest to ``anchor``.

    ``pred`` and ``anchor`` are encoded depth (Bx1xHxW); ``mask`` the pasted pixels of the
    first n frames (NxHxW) and ``sim_depth`` their sim frames' metres. Each part is a mean
    over its own pixels, so a few pasted objects weigh as much as the rest of the frame.
    """
    check_depth_norm(norm)
    pred = pred.float()
    n = mask.shape[0]
    code, valid = depth_targets(sim_depth[:n].to(pred.device), model_cfg, None, False)
    pasted = torch.zeros_like(pred, dtype=torch.bool)
    pasted[:n] = mask[:, None] & valid
    rest = torch.ones_like(pasted)
    rest[:n] = ~mask[:, None]
    target = anchor.clone()
    target[:n] = torch.where(mask[:, None], code.to(target.dtype), anchor[:n])
    err = depth_error(pred - target, norm)
    out = err[rest].mean() if bool(rest.any()) else _zero_like(pred)
    return out + err[pasted].mean() if bool(pasted.any()) else out


#: ``train.self_train_paste: classmix``: paste a random half of each sim frame's classes.
CLASSMIX = 'classmix'


def paste_classes(image, labels, sim_batch, classes):
    """Copy the pixels of ``classes`` of sim frame i onto real frame i, with their labels.

    Copy-paste of whole sim objects (cars, poles, signs) into real scenes: the thin classes
    the real frames' own labels rarely hold get exact targets in a real context, while the
    rest of each frame keeps its real pixels and labels. The sim camera matches the real one,
    so a pasted object stands where such an object could. Real frames beyond the sim batch
    are left as they are. ``classes`` is a tuple of class ids, or ``CLASSMIX``: a random half
    of the classes each sim frame holds (DACS's ClassMix, ``class_mix_mask``), regions too.
    Return the new images and labels, and the pasted pixels (the first n frames, NxHxW).
    """
    n = min(image.shape[0], sim_batch['image'].shape[0])
    sim_lab = sim_batch['labels'][:n].to(labels.device)
    mask = class_mix_mask(sim_lab) if classes == CLASSMIX else \
        torch.isin(sim_lab, torch.as_tensor(list(classes), device=sim_lab.device))
    image, labels = image.clone(), labels.clone()
    image[:n] = torch.where(mask[:, None], sim_batch['image'][:n].to(image.dtype), image[:n])
    labels[:n] = torch.where(mask, sim_lab.to(labels.dtype), labels[:n])
    return image, labels, mask

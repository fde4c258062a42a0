"""The transfer benchmark's arithmetic: gap fractions, validity checks, the adapted-row rule."""
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / 'bench'))
import bench_transfer as bt  # noqa: E402

#: Each benchmark row's config overrides, by row name.
ROW_SETS = {name: sets for name, _, sets, _ in bt.ROWS}
#: Training seconds a run may take: the 8-minute cap less about 30 s of stage 1, export and
#: scoring.
TRAIN_CAP_S = 480 - 30


def _methods(rows):
    """rows: name -> (abs_rel, miou, abs_rel std, miou std) on real; sim mIoU 0.45."""
    out = {}
    for name, (a, m, sa, sm) in rows.items():
        stat = {'abs_rel': {'mean': a, 'std': sa, 'n': 3}, 'miou': {'mean': m, 'std': sm, 'n': 3}}
        out[name] = {'real': stat, 'sim': {**stat, 'miou': {'mean': 0.45, 'std': 0.0, 'n': 3}}}
    return out


ROWS = {'mean_prior': (0.20, 0.24, 0.0, 0.0), 'sim_only': (0.30, 0.28, 0.01, 0.01),
        'oracle': (0.18, 0.44, 0.01, 0.01), 'oracle_l1': (0.17, 0.45, 0.01, 0.01),
        'twin': (0.23, 0.37, 0.01, 0.01), 'aug': (0.21, 0.30, 0.01, 0.01)}


def test_gap_fractions_are_the_share_of_the_sim_only_to_oracle_gap():
    gaps = bt.gap_fractions(_methods(ROWS))
    assert gaps['twin']['abs_rel'] == pytest.approx(0.07 / 0.12)
    assert gaps['twin']['miou'] == pytest.approx(0.09 / 0.16)
    assert 'sim_only' not in gaps and 'oracle' not in gaps


def test_best_adapted_row_never_is_an_oracle_or_floor_variant():
    methods = _methods(ROWS)
    trained_as = {'oracle_l1': 'oracle', 'twin': 'twin_vae', 'aug': 'sim_only'}
    out = bt.targets(methods, bt.gap_fractions(methods), trained_as)
    assert out['best_adapted'] == 'twin'            # min(58 %, 56 %) beats aug's min
    assert out['best_closes_50pct_both'] and out['best_seed_std_below_gap_closed']
    assert bt.targets(methods, bt.gap_fractions(methods))['best_adapted'] == 'oracle_l1'


def test_rows_over_the_budget_are_shown_marked_and_never_the_best():
    over = bt.OVER_BUDGET[-1]
    rows = {**ROWS, over: (0.21, 0.42, 0.01, 0.01)}   # would be the best row
    methods = _methods(rows)
    trained_as = {'oracle_l1': 'oracle', over: 'sim_only'}
    assert bt.targets(methods, bt.gap_fractions(methods), trained_as)['best_adapted'] == 'twin'
    assert bt.shown_name(over) == f'{over} (over budget)' and bt.shown_name('twin') == 'twin'
    assert all(name in [r[0] for r in bt.ROWS] for name in bt.OVER_BUDGET)


def test_the_unstandardised_references_are_shown_never_the_best():
    rows = {**ROWS, 'sim_only_raw': (0.17, 0.43, 0.01, 0.01)}   # would be the best row
    methods = _methods(rows)
    out = bt.targets(methods, bt.gap_fractions(methods),
                     {'sim_only_raw': 'sim_only', 'oracle_l1': 'oracle'})
    assert out['best_adapted'] == 'twin' and 'sim_only_raw' in bt.gap_fractions(methods)
    for base in ('sim_only', 'oracle'):   # the baselines standardise; their references not
        assert bt.INPUT_NORM in ROW_SETS[base] and bt.INPUT_NORM not in ROW_SETS[f'{base}_raw']
        assert [o for o in ROW_SETS[base] if o != bt.INPUT_NORM] == ROW_SETS[f'{base}_raw']


def test_paper_recipe_keeps_the_paper_network_and_gets_the_baselines_wall_time():
    from sim2real_perception.config import load_config
    cfg = load_config('cpu', ROW_SETS['twin_vae_paper'])
    model, train = cfg['model'], cfg['train']
    assert (model['skips'], model['shared_layers'], model['depth_encoding'], model['prior']) == (
        'none', 3, 'linear', 'none')
    assert train['stage2_lean'] is False and train['lr_schedule'] == 'constant'
    # A full paper stage-2 step costs about 1.5 s here, a baseline step about 0.45 s: its
    # steps fill at least the baselines' wall time and stay inside the 8-minute cap; the old
    # row had 120 (under half of it).
    seconds = train['stage2_steps'] * 1.5
    assert load_config('cpu')['train']['supervised_steps'] * 0.45 <= seconds <= TRAIN_CAP_S
    old = ROW_SETS['twin_vae_paper_120']
    assert old[:-1] == ROW_SETS['twin_vae_paper'] and old[-1] == 'train.stage2_steps=120'


def test_paper_ablations_change_only_the_latent_or_the_cost_of_a_step():
    from sim2real_perception.config import load_config
    from sim2real_perception.model import ModelConfig

    def latent(row):
        cfg = ModelConfig.from_dict(load_config('cpu', ROW_SETS[row])['model'])
        return cfg.height // cfg.downsampling, cfg.width // cfg.downsampling

    paper = ROW_SETS['twin_vae_paper']
    assert latent('twin_vae_paper') == (2, 4)
    assert ROW_SETS['twin_vae_paper_pack4'][:len(paper)] == paper
    assert latent('twin_vae_paper_pack4') == (8, 16)
    assert ROW_SETS['twin_vae_paper_64x128'][:len(paper)] == paper
    small = load_config('cpu', ROW_SETS['twin_vae_paper_64x128'])
    assert (small['model']['height'], small['model']['width']) == (64, 128)
    assert latent('twin_vae_paper_64x128') == (2, 4)
    # About 0.28 s a step at 64x128 (1.5 s at 128x256): the steps stay inside 8 minutes.
    assert small['train']['stage2_steps'] * 0.28 <= TRAIN_CAP_S


@pytest.mark.parametrize('row, base', [('twin_vae_paper_elbo', 'twin_vae_paper'),
                                       ('twin_vae_paper_64x128_elbo', 'twin_vae_paper_64x128')])
def test_elbo_rows_weigh_only_the_kl_terms_as_the_elbo_sums_do(row, base):
    """KL weight = latent elements / image elements of the row's own network, else = base."""
    from sim2real_perception.config import load_config
    from sim2real_perception.model import ModelConfig
    assert ROW_SETS[row][:len(ROW_SETS[base])] == ROW_SETS[base]
    cfg = load_config('cpu', ROW_SETS[row])
    m = ModelConfig.from_dict(cfg['model'])
    latent = m.latent_channels * (m.height // m.downsampling) * (m.width // m.downsampling)
    want = latent / (3 * m.height * m.width)
    base_cfg = load_config('cpu', ROW_SETS[base])
    kl = ('kl_real', 'kl_sim', 's2_kl_real', 's2_kl_sim')
    for key in kl:
        assert cfg['loss'][key] == pytest.approx(want, rel=1e-2)
        assert base_cfg['loss'][key] == 1.0
    assert {k: v for k, v in cfg['loss'].items() if k not in kl} == \
        {k: v for k, v in base_cfg['loss'].items() if k not in kl}
    assert cfg['model'] == base_cfg['model'] and cfg['train'] == base_cfg['train']


def test_heads_on_mean_row_changes_only_what_the_heads_read():
    from sim2real_perception.config import load_config
    base = ROW_SETS['twin_vae_paper_64x128_elbo']
    assert ROW_SETS['twin_vae_paper_64x128_elbo_mu'] == base + ['loss.heads_on=mu']
    assert load_config('cpu', base)['loss']['heads_on'] == 'z'   # the default: mu + noise


def test_self_training_ablation_drops_only_the_sim_side_randomisation():
    full = ROW_SETS['sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05']
    alone = ROW_SETS['sim_only_kitti_st700_r2_keep8_paste_lr05']
    assert set(full) - set(alone) == {'data.sim.region_aug=1.0',
                                      'data.sim.region_keep_hue=[building]'}
    assert set(alone) - set(full) == set(ROW_SETS['sim_only'])   # the baseline's own settings


def test_depth_from_unchanged_frames_rows_add_only_the_share_and_the_depth_switch():
    half = ['data.sim.region_aug_share=0.5']
    clean = half + ['data.sim.region_aug_depth=false']
    assert ROW_SETS['sim_only_region_kitti_bld_half_cd'] == \
        ROW_SETS['sim_only_region_kitti_bld'] + clean
    paste = ROW_SETS['sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05']
    assert ROW_SETS['sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_half'] == paste + half
    assert ROW_SETS['sim_only_region_kitti_bld_st700_r2_keep8_paste_lr05_half_cd'] == \
        paste + clean


def test_best_adapted_beating_the_floor_skips_rows_worse_than_a_constant():
    rows = {**ROWS, 'good': (0.19, 0.33, 0.01, 0.01)}   # beats the floor (0.20, 0.24)
    methods = _methods(rows)
    out = bt.targets(methods, bt.gap_fractions(methods), {'oracle_l1': 'oracle'})
    assert out['best_adapted'] == 'twin'                 # 56 %, but depth 0.23 > 0.20
    assert out['best_adapted_beating_floor'] == 'good'   # min(92 %, 31 %)
    none = _methods(ROWS)
    assert bt.targets(none, bt.gap_fractions(none), {'oracle_l1': 'oracle'})[
        'best_adapted_beating_floor'] is None


def test_validity_checks_the_floor_the_separation_and_the_gap():
    methods = _methods(ROWS)
    checks = bt.validity(methods)
    assert checks['every_learned_method_beats_mean_prior']['ok'] is False   # sim_only depth
    # The misses, each with its size: sim_only and twin are worse than the floor's 0.20.
    misses = checks['every_learned_method_beats_mean_prior']['misses']
    assert [(m['row'], m['metric']) for m in misses] == [('sim_only', 'abs_rel'),
                                                         ('twin', 'abs_rel'), ('aug', 'abs_rel')]
    assert misses[0]['value'] == 0.30 and misses[0]['floor'] == 0.20
    assert misses[0]['seed_std'] == 0.01
    line = bt.validity_line(checks)
    assert 'beats mean_prior: NO (sim_only AbsRel 0.3000 vs 0.2000 (seed std 0.0100), ' in line
    assert 'aug AbsRel 0.2100 vs 0.2000' in line and 'oracle AbsRel' not in line
    assert checks['oracle_beats_sim_only_by_3_std']['ok'] is True
    assert checks['domain_gap_miou_sim_minus_real']['value'] == pytest.approx(0.17)
    noisy = _methods({**ROWS, 'sim_only': (0.30, 0.28, 0.2, 0.01)})
    assert bt.validity(noisy)['oracle_beats_sim_only_by_3_std']['ok'] is False
    assert math.isclose(bt.validity(noisy)['oracle_beats_sim_only_by_3_std']['abs_rel'][
        'larger_seed_std'], 0.2)


def test_cityscapes_miou_scores_a_predicted_van_as_car():
    import numpy as np
    from analyse_label_errors import cityscapes_miou
    from sim2real_perception.labels import CLASS_NAMES
    k = len(CLASS_NAMES)
    road, car, van = (CLASS_NAMES.index(c) for c in ('road', 'car', 'van'))
    conf = np.zeros((k, k + 1))   # ground truth rows, predicted columns (+ invalid)
    conf[road, road] = 90
    conf[road, van] = 10          # road taken for van: still wrong as car
    conf[car, van] = 30           # cars taken for van: right in KITTI's taxonomy
    conf[car, car] = 10
    conf[car, k] = 5              # invalid predictions stay errors
    # As predicted: road 90/100, car 10/45, van 0/40 -> mean of three.
    # Van read as car: road 90/100, car 40/(45 + 50 - 40) = 40/55 -> mean of two.
    assert cityscapes_miou(conf) == pytest.approx((0.9 + 40 / 55) / 2)
    assert not math.isclose(cityscapes_miou(conf), (0.9 + 10 / 45 + 0.0) / 3)


def test_flip_averaged_network_commutes_with_mirroring_the_frame():
    """F(mirror x) = mirror F(x) holds for the flip average, not for the plain network."""
    import numpy as np
    import torch
    from analyse_flip_average import FlipAveraged
    from sim2real_perception.config import load_config
    from sim2real_perception.model import DepthSegNet, ModelConfig
    torch.manual_seed(0)
    net = DepthSegNet(ModelConfig.from_dict(load_config('test')['model'])).eval()
    cfg = net.cfg
    rng = np.random.default_rng(0)
    frame = torch.from_numpy(rng.integers(0, 256, (1, cfg.height, cfg.width, 3), np.uint8))
    mirror = frame.flip(2)
    with torch.no_grad():
        plain = [net(x)[0] for x in (frame, mirror)]
        avg_net = FlipAveraged(net)
        avg = [avg_net(x) for x in (frame, mirror)]
    rel = ((avg[1][0] - avg[0][0].flip(-1)).abs() / avg[0][0]).max().item()
    assert rel < 1e-4
    assert (avg[1][1] == avg[0][1].flip(-1)).float().mean().item() > 0.99
    plain_rel = ((plain[1] - plain[0].flip(-1)).abs() / plain[0]).max().item()
    assert plain_rel > 100 * max(rel, 1e-6)


def test_unseen_drives_summary_means_stds_and_gap_fractions_by_hand():
    from analyse_unseen_drives import summary
    per_seed = {'sim_only': {0: {'abs_rel': 0.30, 'miou': 0.20},
                             1: {'abs_rel': 0.20, 'miou': 0.30}},
                'oracle': {0: {'abs_rel': 0.10, 'miou': 0.50},
                           1: {'abs_rel': 0.10, 'miou': 0.50}},
                'adapted': {0: {'abs_rel': 0.15, 'miou': 0.40}}}
    table = summary(per_seed)
    assert table['sim_only']['depth.abs_rel']['mean'] == pytest.approx(0.25)
    assert table['sim_only']['segmentation.miou']['std'] == pytest.approx(0.1 / 2 ** 0.5)
    assert table['adapted']['segmentation.miou']['std'] is None   # one seed
    # gap 0.25 -> 0.10 in AbsRel, 0.25 -> 0.50 in mIoU
    assert table['adapted']['gap_closed']['abs_rel'] == pytest.approx(0.10 / 0.15)
    assert table['adapted']['gap_closed']['miou'] == pytest.approx(0.15 / 0.25)
    assert 'gap_closed' not in table['oracle'] and 'gap_closed' not in table['sim_only']


def test_unseen_drives_are_scored_like_the_val_split_and_reported_beside_it():
    methods = _methods(ROWS)
    stat = {'mean': 0.5, 'std': None, 'n': 1}
    for name, (a, m, _, _) in ROWS.items():   # unseen: the oracle's lead halves
        methods[name]['unseen'] = {'abs_rel': {'mean': a + 0.05, 'std': 0.01, 'n': 3},
                                   'miou': {'mean': m, 'std': 0.01, 'n': 3},
                                   'pixel_acc': stat, 'label_change_share': stat}
        methods[name]['wall_s'] = {'mean': 400.0, 'std': None, 'n': 1}
        for split in ('real', 'sim'):
            methods[name][split].update(pixel_acc=stat, label_change_share=stat)
    methods['oracle']['unseen']['miou']['mean'] = 0.36   # 0.28 -> 0.36 instead of 0.44
    view = bt.on_split(methods, 'unseen')
    assert view['twin']['real'] is methods['twin']['unseen']
    assert view['twin']['sim'] is methods['twin']['sim']   # the domain-gap check stays sim's
    gaps = bt.gap_fractions(view)
    assert gaps['twin']['miou'] == pytest.approx((0.37 - 0.28) / (0.36 - 0.28))
    assert gaps['twin']['abs_rel'] == pytest.approx((0.28 - 0.35) / (0.23 - 0.35))
    result = {'methods': methods, 'gap_closed': bt.gap_fractions(methods),
              'gt_label_change_share': {'real': 0.3, 'sim': 0.3},
              'validity': bt.validity(methods),
              'unseen_drives': {'frames': 120, 'drives': 12, 'gap_closed': gaps,
                                'validity': bt.validity(view)}}
    text = bt.markdown(result)
    unseen_part = text.split('Unseen drives:')[1]
    assert '| twin | 0.280 ± 0.010 | 0.370 ± 0.010 |' in unseen_part
    assert f"{gaps['twin']['miou']:.0%}" in unseen_part
    assert 'Validity (unseen drives):' in unseen_part


def test_checkpoint_scores_reproduce_the_run_export(tmp_path):
    """A run's last checkpoint, exported by analyse_checkpoints.py, scores as its export."""
    import json
    from analyse_checkpoints import main as analyse
    from sim2real_perception.config import load_config
    from training import train
    from training.data.make_procedural import generate
    from training.evaluate import evaluate_model
    data = tmp_path / 'data'
    generate(data, sim_frames=8, real_frames=8, height=128, width=128, seed=5,
             frames_per_sequence=4, workers=1)
    cfg = load_config('test', [f'data.{s}.root={data}' for s in ('sim', 'real', 'eval')]
                      + ['data.eval.val_fraction=0.25', 'train.supervised_steps=3'])
    summary = train.run(cfg, tmp_path / 'runs' / 'row_s0', method='sim_only')
    out = tmp_path / 'results'
    assert analyse(['--runs', str(tmp_path / 'runs'), '--rows', 'row', 'missing_row',
                    '--seeds', '0', '--tags', 'supervised_last', 'no_such_tag',
                    '--work', str(tmp_path / 'work'), '--results', str(out)]) == 0
    report = json.loads((out / 'checkpoints.json').read_text())
    [entry] = report['runs']
    assert (entry['row'], entry['seed'], entry['tag'], entry['step']) == \
        ('row', 0, 'supervised_last', 3)
    direct = evaluate_model(summary['export_dir'], cfg['data']['eval'], 'val')
    assert entry['abs_rel'] == pytest.approx(direct['depth']['abs_rel'], rel=1e-5)
    assert entry['miou'] == pytest.approx(direct['segmentation']['miou'], abs=1e-3)
    assert '| row | supervised_last | 1 |' in (out / 'checkpoints.md').read_text()
    assert analyse(['--runs', str(tmp_path / 'runs'), '--rows', 'missing_row',
                    '--work', str(tmp_path / 'work'), '--results', str(out)]) == 2


def test_main_job_recipes_train_their_benchmark_rows():
    from training.main_job import RECIPES
    rows = {name: (method, tuple(sets)) for name, method, sets, _ in bt.ROWS}
    row_of = {'twin_vae': 'twin_vae', 'sim_only_region': 'sim_only_region',
              'sim_only_region_kitti': 'sim_only_region_kitti',
              'sim_only_region_kitti_st': 'sim_only_region_kitti_st850_b2',
              'sim_only_region_kitti_bld_st': 'sim_only_region_kitti_bld_st850_b2',
              'sim_only_region_kitti_bld_st_keep8': 'sim_only_region_kitti_bld_st850_r2_keep8',
              'sim_only_region_kitti_bld_st_paste':
                  'sim_only_region_kitti_bld_st850_r2_keep8_paste',
              'sim_only_region_kitti_bld_st_paste_contact':
                  'sim_only_region_kitti_bld_st850_r2_keep8_paste_contact'}
    assert set(row_of) == set(RECIPES)
    for recipe, row in row_of.items():
        assert RECIPES[recipe] == rows[row], recipe


def _recorded(rows, seeds, splits, config='test'):
    """Return a results JSON as bench_transfer writes it, with made-up figures per run."""
    runs = []
    for i, (name, method, extra, _) in enumerate(rows):
        for seed in seeds:
            for split in splits:
                runs.append({'method': name, 'seed': seed, 'split': split,
                             'abs_rel': 0.30 - 0.01 * i + 0.001 * seed,
                             'miou': 0.20 + 0.05 * i + 0.002 * seed, 'pixel_acc': 0.8,
                             'label_change_share': 0.1, 'wall_s': 100.0 + seed})
    return {'created': '2026-12-01T00:00:00Z', 'config': config,
            'data': json.loads(json.dumps(bt.QUICK_DATA)),
            'rows': {n: {'method': m, 'overrides': o, 'what': w} for n, m, o, w in rows},
            'runs': runs, 'gt_label_change_share': {'real': 0.3, 'sim': 0.2},
            'machine': {'cpu': 'x86_64', **bt.cpu_model()},
            'unseen_drives': {'root': 'x', 'drives': 2, 'frames_per_drive': 2, 'frames': 4},
            'curves_png': 'old_curves.png'}


def _rows(*names):
    return [r for r in bt.ROWS if r[0] in names]


def test_reuse_carries_over_only_rows_recorded_whole_with_the_same_definition(tmp_path):
    rows = _rows('mean_prior', 'sim_only', 'oracle', 'twin_vae', 'sim_only_aug')
    prev = _recorded(rows, [0, 1], ('real', 'sim', 'unseen'))
    prev['rows']['twin_vae']['overrides'] = ['train.stage2_steps=7']   # defined otherwise
    prev['runs'] = [r for r in prev['runs']   # sim_only_aug lacks seed 1's unseen run
                    if not (r['method'] == 'sim_only_aug' and r['seed'] == 1
                            and r['split'] == 'unseen')]
    path = tmp_path / 'prev.json'
    path.write_text(json.dumps(prev))
    out = tmp_path / 'out'
    args = (rows, [0, 1], ('real', 'sim', 'unseen'), 'test', bt.QUICK_DATA, out)
    carried, _ = bt.reusable_runs(path, *args)
    assert sorted(carried) == ['mean_prior', 'oracle', 'sim_only']
    assert all(r['reused_from'] == prev['created'] for r in carried['oracle'])
    assert len(carried['oracle']) == 6
    # without the unseen split sim_only_aug is whole; a finished local run wins over the JSON
    done = out / 'compare' / 'runs' / 'oracle_s1'
    done.mkdir(parents=True)
    (done / 'compare_run.json').write_text(json.dumps({'done': True}))
    carried, _ = bt.reusable_runs(path, rows, [0, 1], ('real', 'sim'), 'test',
                                  bt.QUICK_DATA, out)
    assert sorted(carried) == ['mean_prior', 'sim_only', 'sim_only_aug']
    # another preset or other data: nothing is carried over
    assert bt.reusable_runs(path, rows, [0, 1], ('real',), 'cpu', bt.QUICK_DATA, out)[0] == {}
    assert bt.reusable_runs(path, rows, [0, 1], ('real',), 'test', bt.DATA, out)[0] == {}
    # another CPU (or one the JSON does not name): its runs are another sample, not these
    prev['machine'] = {'cpu': 'x86_64', 'cpu_model': 'Another CPU', 'avx512': False}
    path.write_text(json.dumps(prev))
    assert bt.reusable_runs(path, rows, [0, 1], ('real',), 'test', bt.QUICK_DATA, out)[0] == {}


def test_reused_rows_make_the_table_without_training(tmp_path):
    rows = _rows('mean_prior', 'sim_only', 'oracle', 'twin_vae')
    prev = _recorded(rows, [0, 1], ('real', 'sim', 'unseen'))
    (tmp_path / 'prev.json').write_text(json.dumps(prev))
    out, results = tmp_path / 'out', tmp_path / 'results'
    assert bt.main(['--quick', '--rows', 'twin_vae', '--seeds', '0', '1', '--out', str(out),
                    '--results', str(results), '--reuse', str(tmp_path / 'prev.json')]) == 0
    assert not (out / 'compare').exists()   # nothing trained
    result = json.loads((results / 'bench_transfer_quick.json').read_text())
    assert result['reused']['rows'] == ['mean_prior', 'oracle', 'sim_only', 'twin_vae']
    twin = result['methods']['twin_vae']
    assert twin['real']['miou']['mean'] == pytest.approx(0.20 + 0.15 + 0.001)
    assert twin['unseen']['abs_rel']['mean'] == pytest.approx(0.27 + 0.0005)
    assert result['gap_closed']['twin_vae']['miou'] == pytest.approx(2.0)
    assert result['curves_png'] == 'old_curves.png'
    assert len(result['runs']) == 4 * 2 * 3
    text = (results / 'bench_transfer_quick.md').read_text()
    assert 'Carried over from' in text and 'not trained again' in text


def test_results_name_the_cpu_that_made_them():
    info = bt.cpu_model()
    if not Path('/proc/cpuinfo').is_file():
        assert info == {}
        return
    assert isinstance(info['cpu_model'], str) and info['cpu_model']
    assert isinstance(info['avx512'], bool)


def test_monitor_curve_lays_stages_end_to_end_and_keeps_a_repeated_step_once():
    text = '\n'.join(['stage,step,abs_rel,miou', 'supervised,25,0.3,0.2', 'supervised,50,0.25,0.3',
                      'self_train,25,0.9,0.9',        # copied from the teacher's run: replaced
                      'self_train,25,0.2,0.35', 'self_train,50,0.19,0.36',
                      'supervised,60,,'])            # the last step, no monitor frames scored
    assert bt.monitor_curve(text) == {25: (0.3, 0.2), 50: (0.25, 0.3), 85: (0.2, 0.35),
                                      110: (0.19, 0.36)}


def test_textured_sim_look_moves_every_row_but_the_oracle_to_its_own_tree(tmp_path):
    rows = _rows('mean_prior', 'sim_only', 'oracle', 'twin_vae', 'sim_only_aug_vars')
    assert bt.with_sim_look(rows, 'flat') == rows
    textured = {r[0]: r[2] for r in bt.with_sim_look(rows, 'textured')}
    flat = {r[0]: r[2] for r in rows}
    assert textured['oracle'] == flat['oracle']                     # reads no sim frame
    assert textured['sim_only_aug_vars'] == flat['sim_only_aug_vars']   # its own sim tree
    for name in ('mean_prior', 'sim_only', 'twin_vae'):
        assert textured[name] == flat[name] + bt.WITH_TEXTURED_SIM
    assert bt.compare_dir(tmp_path, 'flat') == tmp_path / 'compare'
    assert bt.compare_dir(tmp_path, 'textured') == tmp_path / 'compare_textured'
    spec = {**bt.QUICK_DATA, 'sim_frames': 2, 'real_frames': 0, 'frames_per_sequence': 2}
    placed = bt.with_sim_roots(tmp_path, spec, bt.with_sim_look(rows, 'textured'))
    tree = (tmp_path / 'data_sim_textured').resolve()
    assert dict((r[0], r[2]) for r in placed)['sim_only'][-1] == f'data.sim.root={tree}'
    style = json.loads((tree / 'manifest.json').read_text())['request']['sim_style']
    assert (style['texture'], style['shadow']) == (0.6, 0.45)
    # runs recorded on one sim look are never carried over to the other
    prev = _recorded(rows[:3], [0], ('real', 'sim'))
    (tmp_path / 'prev.json').write_text(json.dumps(prev))
    args = (rows[:3], [0], ('real', 'sim'), 'test', bt.QUICK_DATA, tmp_path / 'out')
    assert sorted(bt.reusable_runs(tmp_path / 'prev.json', *args)[0]) == [
        'mean_prior', 'oracle', 'sim_only']
    assert bt.reusable_runs(tmp_path / 'prev.json', *args, 'textured')[0] == {}


def test_latent_stats_by_hand():
    from analyse_latent import latent_stats
    same = latent_stats([[1.0, -1.0], [1.0, -1.0], [1.0, -1.0]])
    assert same == {'mean_abs_mu': 1.0, 'frame_std': 0.0, 'snr': 0.0}
    apart = latent_stats([[0.0, 2.0], [2.0, 0.0]])   # each element: variance 2 (ddof 1)
    assert apart['mean_abs_mu'] == pytest.approx(1.0)
    assert apart['frame_std'] == pytest.approx(math.sqrt(2.0))
    assert apart['snr'] == pytest.approx(2.0)


def test_latent_analysis_tells_a_collapsed_latent_from_a_live_one(tmp_path):
    """An encoder whose last norm has zero gain gives every frame one latent: std 0."""
    import torch
    from analyse_latent import main as analyse
    from sim2real_perception.config import load_config
    from sim2real_perception.model import DepthSegNet
    from sim2real_perception.model_io import export_model_dir
    from training.data.make_procedural import generate
    data = tmp_path / 'data'
    generate(data, sim_frames=4, real_frames=20, height=128, width=128, seed=5,
             frames_per_sequence=10, workers=1)   # 2 val frames
    torch.manual_seed(0)
    cfg = load_config('test', ['model.skips=none', 'model.prior=none'])['model']
    live = DepthSegNet(cfg)
    export_model_dir(live.eval(), tmp_path / 'runs' / 'live_s0' / 'export')
    with torch.no_grad():
        live.encoder.layers[-1][1].weight.zero_()   # BatchNorm gain 0: output = its bias
    export_model_dir(live.eval(), tmp_path / 'runs' / 'dead_s0' / 'export')
    out = tmp_path / 'results'
    assert analyse(['--data', str(data), '--runs', str(tmp_path / 'runs'), '--rows', 'live',
                    'dead', '--results', str(out)]) == 0
    rows = json.loads((out / 'latent.json').read_text())['rows']
    assert rows['dead']['frame_std'] == 0.0 and rows['dead']['snr'] == 0.0
    assert rows['live']['frame_std'] > 1e-3
    assert rows['live']['latent'] == '8x2x2'
    assert '| dead | 0 | 8x2x2 |' in (out / 'latent.md').read_text()
    assert analyse(['--data', str(data), '--runs', str(tmp_path / 'runs'), '--rows',
                    'missing', '--results', str(out)]) == 2


def test_validity_leaves_the_floors_variants_out_of_check_1():
    rows = {**ROWS, 'floor_b': (0.21, 0.23, 0.0, 0.0)}   # another floor, worse than mean_prior
    methods = _methods(rows)
    named = [m['row'] for m in bt.validity(methods)['every_learned_method_beats_mean_prior'][
        'misses']]
    assert 'floor_b' in named                             # without knowing what it is
    checks = bt.validity(methods, {'floor_b': 'mean_prior'})
    assert 'floor_b' not in checks['every_learned_method_beats_mean_prior']['per_method']
    assert ROW_SETS['mean_prior_scenes60'] == bt.WITH_SCENES60_SIM
    assert ROW_SETS['sim_only_scenes60'] == ROW_SETS['sim_only'] + bt.WITH_SCENES60_SIM


def test_ground_gate_rows_add_only_the_gate():
    assert ROW_SETS['sim_only_gate'] == ROW_SETS['sim_only'] + ['model.prior_gate=ground']
    assert ROW_SETS['sim_only_gate_mean'] == ROW_SETS['sim_only'] + [
        'model.prior_gate=ground_mean']

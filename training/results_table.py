"""The Table-1-shaped results table (methods x depth and segmentation metrics).

Shared by ``training.evaluate`` (one number per cell) and ``training.compare`` (mean +- std
over seeds), as plain text for the terminal and as Markdown for reports and the README.
"""
import math

#: (key in the metrics dict, column title, higher is better).
DEPTH_COLUMNS = (('abs_rel', 'AbsRel', False), ('sq_rel', 'SqRel', False),
                 ('rmse', 'RMSE', False), ('rmse_log', 'RMSElog', False),
                 ('a1', 'd<1.25', True), ('a2', 'd<1.25^2', True), ('a3', 'd<1.25^3', True))
SEG_COLUMNS = (('miou', 'mIoU', True), ('pixel_acc', 'PixAcc', True),
               ('label_change_share', 'LblChg', None))
COLUMNS = tuple(('depth', *c) for c in DEPTH_COLUMNS) + \
    tuple(('segmentation', *c) for c in SEG_COLUMNS)
LEGEND = ('Depth errors (AbsRel, SqRel, RMSE in m, RMSElog): lower is better; d<1.25^k, '
          'mIoU and pixel accuracy: higher is better. LblChg: share of pixels whose '
          'predicted label differs from that pixel\'s most frequent prediction over the '
          'frames (0 = the same map for every frame; compare with the ground truth\'s).')


def is_number(value):
    """Return True for a finite int/float (not None, NaN or a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def metric_value(result, section, key):
    """Return ``result[section][key]`` as a float, NaN when missing or not a number."""
    value = (result.get(section) or {}).get(key)
    return float(value) if is_number(value) else math.nan


def format_cell(mean, std=None):
    """Return ``0.123`` or ``0.123 ± 0.004``; ``-`` for NaN (no valid pixels)."""
    if not is_number(mean):
        return '-'
    text = f'{mean:.3f}'
    if std is not None and is_number(std):
        text += f' ± {std:.3f}'
    return text


def rows_from_results(results):
    """Turn ``{name: metrics dict}`` into ``[(name, [cell, ...])]`` (one number per cell)."""
    return [(name, [format_cell(metric_value(r, sec, key)) for sec, key, _, _ in COLUMNS])
            for name, r in results.items()]


def render(rows, markdown=False, title=None):
    """Render ``[(name, cells)]`` as an aligned text table or a Markdown table."""
    header = ['Method'] + [title_ for _, _, title_, _ in COLUMNS]
    if markdown:
        lines = [f'**{title}**', ''] if title else []
        lines.append('| ' + ' | '.join(header) + ' |')
        lines.append('|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|')
        lines += ['| ' + ' | '.join([name, *cells]) + ' |' for name, cells in rows]
        lines += ['', LEGEND]
        return '\n'.join(lines)
    table = [header] + [[name, *cells] for name, cells in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    split = 1 + len(DEPTH_COLUMNS)

    def line(r):
        left = '  '.join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                         for i, c in enumerate(r[:split]))
        right = '  '.join(c.rjust(widths[i + split]) for i, c in enumerate(r[split:]))
        return f'{left} | {right}'

    width = len(line(table[0]))
    lines = [title] if title else []
    lines += [line(table[0]), '-' * width] + [line(r) for r in table[1:]] + [LEGEND]
    return '\n'.join(lines)

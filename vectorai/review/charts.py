"""Small SVG charts drawn on the server: a bar per class and a histogram of confidences.

Every label goes through ``markupsafe.escape``: class names come from a model file, which the
page treats as no more trusted than the stream.
"""

from __future__ import annotations

from typing import Sequence

from markupsafe import Markup, escape

_WIDTH = 420
_BAR_HEIGHT = 16
_GAP = 4
_LABEL_WIDTH = 110


def class_mix_svg(counts: Sequence[tuple[str, int]]) -> Markup:
    """Horizontal bars, one per (class name, count), longest for the largest count."""
    if not counts:
        return Markup("<p class=empty>no predictions</p>")
    largest = max(n for _, n in counts) or 1
    span = _WIDTH - _LABEL_WIDTH - 60
    rows = []
    for i, (name, count) in enumerate(counts):
        y = i * (_BAR_HEIGHT + _GAP)
        length = max(1.0, span * count / largest)
        rows.append(
            f'<text x="{_LABEL_WIDTH - 6}" y="{y + 12}" text-anchor="end">{escape(str(name)[:16])}</text>'
            f'<rect x="{_LABEL_WIDTH}" y="{y}" width="{length:.1f}" height="{_BAR_HEIGHT}"><title>'
            f'{escape(str(name))}: {count}</title></rect>'
            f'<text x="{_LABEL_WIDTH + length + 4:.1f}" y="{y + 12}">{count:,}</text>')
    height = len(counts) * (_BAR_HEIGHT + _GAP)
    return Markup(f'<svg class="chart bars" role="img" aria-label="predictions per class" '
                  f'width="{_WIDTH}" height="{height}" viewBox="0 0 {_WIDTH} {height}">{"".join(rows)}</svg>')


def histogram_svg(bins: Sequence[int], low: float = 0.0, high: float = 1.0) -> Markup:
    """Vertical bars for ``bins`` (counts of equal-width bins from ``low`` to ``high``)."""
    if not bins or not any(bins):
        return Markup("<p class=empty>no predictions</p>")
    height, axis = 120, 16
    largest = max(bins)
    width = _WIDTH / len(bins)
    step = (high - low) / len(bins)
    bars = []
    for i, count in enumerate(bins):
        tall = (height - axis) * count / largest
        start = low + i * step
        bars.append(f'<rect x="{i * width + 1:.1f}" y="{height - axis - tall:.1f}" width="{width - 2:.1f}" '
                    f'height="{tall:.1f}"><title>{start:.2f}-{start + step:.2f}: {count}</title></rect>')
    labels = (f'<text x="0" y="{height - 2}">{low:.1f}</text>'
              f'<text x="{_WIDTH}" y="{height - 2}" text-anchor="end">{high:.1f}</text>')
    return Markup(f'<svg class="chart histogram" role="img" aria-label="confidence histogram" width="{_WIDTH}" '
                  f'height="{height}" viewBox="0 0 {_WIDTH} {height}">{"".join(bars)}{labels}</svg>')

"""Attention maps as labelled heat maps (matplotlib, no display needed)."""

import warnings

import numpy as np

# Families tried, in order, for glyphs the default font lacks (CJK ideographs,
# Hangul, kana): matplotlib falls back through the list glyph by glyph.
CJK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK KR", "Noto Sans CJK SC", "Noto Sans CJK TC",
             "Source Han Sans", "NanumGothic", "WenQuanYi Zen Hei", "Droid Sans Fallback",
             "Malgun Gothic", "Microsoft YaHei", "AppleGothic", "Hiragino Sans")


def _font_families():
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return ["DejaVu Sans"] + [name for name in CJK_FONTS if name in installed]


def _needs_cjk(labels):
    return any(ord(ch) >= 0x1100 and not 0x2000 <= ord(ch) < 0x2E80
               for label in labels for ch in label)


def _labels(tokens):
    return [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens]


def _trim(attention, source_tokens, target_tokens):
    """Drops padding (empty labels): (weights, source labels, target labels)."""
    source, target = _labels(source_tokens), _labels(target_tokens)
    attention = np.asarray(attention, dtype=float)
    if attention.ndim != 2 or attention.shape[0] < len(target) or attention.shape[1] < len(source):
        raise ValueError(f"`attention` must be (T, S) with T >= {len(target)} target and "
                         f"S >= {len(source)} source tokens; got shape {attention.shape}.")
    rows = [i for i, t in enumerate(target) if t]
    columns = [j for j, s in enumerate(source) if s]
    if not rows or not columns:
        raise ValueError("Nothing to plot: the source or target tokens are all empty.")
    return (attention[np.ix_(rows, columns)], [source[j] for j in columns],
            [target[i] for i in rows])


def figure_inches(maps, cell_inches=0.35):
    """(width, height) of the figure `plot_attention_maps` draws for trimmed maps."""
    width = max(4.0, 1.5 + cell_inches * max(len(m[1]) for m in maps))
    height = sum(max(3.0, 1.2 + cell_inches * len(m[2])) for m in maps)
    return width, height


def plot_attention_maps(maps, path=None, cell_inches=0.35, dpi=100):
    """Draws attention maps one under the other, labelled with their tokens.

    Args:
        maps: A list of `(attention, source_tokens, target_tokens, title)`:
            attention `(T, S)` (rows are output steps), S and T labels (str or
            UTF-8 bytes; empty ones, padding, are dropped with their
            rows/columns), and a title (or None).
        path: Where to save a PNG, or None.
        cell_inches: Size of one cell; the figure grows with the tokens.
        dpi: Resolution of the PNG.

    Returns:
        The matplotlib `Figure` (closed: save it or inspect its axes).

    Example:

    >>> plot_attention_maps([(np.eye(3), list("abc"), list("ABC"), "demo")], "attention.png")
    <Figure size ...>
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if not maps:
        raise ValueError("`maps` is empty: nothing to plot.")
    trimmed = [(*_trim(attention, source, target), title)
               for attention, source, target, title in maps]
    families = _font_families()
    labels = [label for m in trimmed for label in m[1] + m[2]]
    if _needs_cjk(labels) and len(families) == 1:
        warnings.warn("Some labels need a CJK/Hangul font and none is installed, so they "
                      "show as boxes; install one (e.g. Debian's fonts-noto-cjk).", stacklevel=2)
    with plt.rc_context({"font.family": families}):
        heights = [max(3.0, 1.2 + cell_inches * len(m[2])) for m in trimmed]
        figure, axes_list = plt.subplots(len(trimmed), 1, figsize=figure_inches(trimmed, cell_inches),
                                         dpi=dpi, squeeze=False,
                                         gridspec_kw={"height_ratios": heights})
        for axes, (weights, x_labels, y_labels, title) in zip(axes_list[:, 0], trimmed):
            image = axes.imshow(weights, cmap="viridis", vmin=0.0,
                                vmax=max(1e-9, float(weights.max())), aspect="auto")
            axes.set_xticks(range(len(x_labels)), x_labels,
                            rotation=90 if any(len(label) > 2 for label in x_labels) else 0)
            axes.set_yticks(range(len(y_labels)), y_labels)
            axes.set_xlabel("source")
            axes.set_ylabel("output")
            if title:
                axes.set_title(title)
            figure.colorbar(image, ax=axes, fraction=0.05, pad=0.03)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return figure


def plot_attention(attention, source_tokens, target_tokens, path=None, title=None, **options):
    """One attention map; see `plot_attention_maps`.

    Example:

    >>> plot_attention(np.eye(3), list("abc"), ["A", "B", "C"], "attention.png")
    <Figure size ...>
    """
    return plot_attention_maps([(attention, source_tokens, target_tokens, title)], path,
                               **options)

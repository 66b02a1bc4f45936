import warnings

import numpy as np
import pytest
from PIL import Image

from keras_s2s_attn.plotting import _font_families, figure_inches, plot_attention, plot_attention_maps


def tick_labels(axis):
    return [label.get_text() for label in axis.get_ticklabels()]


def test_file_written_with_labels_matching_tokens(tmp_path):
    attention = np.array([[0.9, 0.1, 0.0, 0.0], [0.2, 0.8, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    path = tmp_path / "map.png"
    figure = plot_attention(attention, [b"c", b"a", b"", b""], ["K", "AE", "[END]"], path,
                            title="cat", dpi=50)
    axes = figure.axes[0]
    assert tick_labels(axes.xaxis) == ["c", "a"]  # padding columns dropped
    assert tick_labels(axes.yaxis) == ["K", "AE", "[END]"]
    assert axes.get_title() == "cat"
    np.testing.assert_allclose(axes.images[0].get_array(), attention[:, :2])
    width, height = figure_inches([(None, ["c", "a"], ["K", "AE", "[END]"])])
    assert Image.open(path).size == (round(width * 50), round(height * 50))


def test_several_maps_stack_in_one_png(tmp_path):
    maps = [(np.eye(3), list("abc"), list("ABC"), "one"),
            (np.full((2, 5), 0.2), list("vwxyz"), ["V", ""], "two")]
    path = tmp_path / "maps.png"
    figure = plot_attention_maps(maps, path, dpi=40)
    images = [axes for axes in figure.axes if axes.images]
    assert [axes.get_title() for axes in images] == ["one", "two"]
    assert tick_labels(images[1].yaxis) == ["V"]
    width, height = figure_inches([(None, list("abc"), list("ABC")),
                                   (None, list("vwxyz"), ["V"])])
    assert Image.open(path).size == (round(width * 40), round(height * 40))


def test_cjk_and_hangul_labels(tmp_path):
    source = ["한", "국", "語", "ひ"]
    has_cjk_font = len(_font_families()) > 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure = plot_attention(np.full((2, 4), 0.25), source, ["韓", "国"], tmp_path / "k.png")
    missing = [w for w in caught if "Glyph" in str(w.message) or "CJK" in str(w.message)]
    if has_cjk_font:
        assert not missing, [str(w.message) for w in missing]  # every glyph was found
    else:
        assert any("fonts-noto-cjk" in str(w.message) for w in missing)
    assert tick_labels(figure.axes[0].xaxis) == source


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        plot_attention(np.eye(2), list("abc"), list("AB"))
    with pytest.raises(ValueError, match="all empty"):
        plot_attention(np.eye(2), ["", ""], list("AB"))
    with pytest.raises(ValueError, match="empty"):
        plot_attention_maps([])

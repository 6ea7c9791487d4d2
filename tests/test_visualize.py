"""mrcnn.visualize: every function renders to a PNG whose pixels show what it should.

Pixel checks map an image pixel's centre to the saved PNG through the drawn
Axes' data transform; images are small and upsampled, so matplotlib draws each
pixel as a block of identical PNG pixels (nearest-neighbour).
"""

import colorsys
import io
import os
import random
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")  # tests must never open a window, even where a display exists

import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mrcnn import utils, visualize  # noqa: E402

CLASS_NAMES = ["BG", "square", "circle", "triangle"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def read_png(path):
    """RGB uint8 pixels of a saved PNG."""
    return np.round(matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)


def drawn(function, *args, **kwargs):
    """Run a drawing function (which returns None, as matterport's) on its own figure:
    the figure's PNG pixels and its Axes."""
    assert function(*args, **kwargs) is None
    fig = plt.gcf()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    buffer.seek(0)
    return read_png(buffer), fig.axes


def png_pixel(png, ax, x, y):
    """The PNG pixel where data point (x, y) of `ax` was drawn (x = column, y = row for images)."""
    dx, dy = ax.transData.transform((x, y))
    return png[int(png.shape[0] - dy), int(dx)]


def blend(value, color, alpha=0.5):
    """Matterport's mask blending of one uint8 pixel, truncated like display_instances' uint32 buffer."""
    return (np.asarray(value, np.uint32) * (1 - alpha) + alpha * np.asarray(color[:3]) * 255
            ).astype(np.uint32).astype(np.uint8)


def linestyle(patch):
    """A patch's line style in short form ("--", ":", "-")."""
    style = patch.get_linestyle()
    return {"dashed": "--", "dotted": ":", "solid": "-"}.get(style, style)


def square_masks(shape, squares):
    """[H, W, N] bool masks of axis-aligned squares given as (y1, x1, y2, x2)."""
    masks = np.zeros(tuple(shape) + (len(squares),), bool)
    for i, (y1, x1, y2, x2) in enumerate(squares):
        masks[y1:y2, x1:x2, i] = True
    return masks


# ---------------------------------------------------------------- colours and masks

def test_random_colors_are_matterports_shuffled_hsv_hues():
    random.seed(3)
    colors = visualize.random_colors(5)
    random.seed(3)
    assert visualize.random_colors(5) == colors  # deterministic under random.seed
    expected = [colorsys.hsv_to_rgb(i / 5, 1, 1.0) for i in range(5)]
    assert sorted(colors) == sorted(expected)
    dim = visualize.random_colors(4, bright=False)
    assert all(np.isclose(max(c), 0.7) for c in dim)
    assert visualize.random_colors(0) == []


def test_apply_mask_blends_exactly_inside_and_leaves_input_alone():
    image = np.full((4, 5, 3), 100, np.uint8)
    mask = np.zeros((4, 5), bool)
    mask[1:3, 2:4] = True
    out = visualize.apply_mask(image, mask, (1.0, 0.0, 0.5))
    assert out.dtype == np.uint8 and out is not image
    assert np.all(image == 100)  # not modified in place
    # 100 * 0.5 + 0.5 * c * 255, truncated to uint8: 177.5 → 177, 50, 113.75 → 113
    assert np.array_equal(out[mask], np.tile([177, 50, 113], (4, 1)))
    assert np.all(out[~mask] == 100)
    as_float = visualize.apply_mask(image.astype(np.float64), mask, (1.0, 0.0, 0.5), alpha=0.2)
    assert np.allclose(as_float[1, 2], [100 * 0.8 + 0.2 * 255, 80, 100 * 0.8 + 0.1 * 255])
    with pytest.raises(ValueError, match="HxWx3"):
        visualize.apply_mask(image[..., 0], mask, (1, 0, 0))


def test_draw_box_draws_a_clipped_outline_in_place():
    image = np.zeros((10, 12, 3), np.uint8)
    out = visualize.draw_box(image, (2, 3, 8, 9), (255, 0, 0))
    assert out is image
    drawn = np.all(image == (255, 0, 0), axis=-1)
    outline = np.zeros((10, 12), bool)
    outline[2:8, 3:9] = True
    outline[4:6, 5:7] = False  # 2-pixel border, interior untouched
    assert np.array_equal(drawn, outline)
    # A box past the image edge is clipped, never wrapped around by negative indices.
    image2 = np.zeros((10, 12), np.uint8)
    visualize.draw_box(image2, np.array([-5, -5, 4, 20]), 7)
    assert image2[:4].any() and not image2[4:].any()
    assert np.all(image2[0:2, :] == 7) and np.all(image2[:4, 10:] == 7)


# ---------------------------------------------------------------- display_instances

@pytest.fixture
def scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    masks = square_masks((24, 32), [(3, 3, 15, 15), (10, 18, 22, 30)])
    return image, utils.extract_bboxes(masks), masks, np.array([1, 2])


def test_display_instances_blends_mask_colour_inside_only(scene):
    image, boxes, masks, class_ids = scene
    colors = [(1.0, 0.0, 0.0), (0.0, 0.0, 1.0)]
    png, (ax,) = drawn(visualize.display_instances, image, boxes, masks, class_ids, CLASS_NAMES,
                       np.array([0.9, 0.75]), title="two", figsize=(4, 3), colors=colors)
    # Deep inside each instance (clear of outline, box and caption): the blended colour.
    for i, (rows, cols) in enumerate([(range(8, 13), range(6, 13)), (range(15, 20), range(21, 28))]):
        for r in rows:
            for c in cols:
                assert np.array_equal(png_pixel(png, ax, c, r), blend(image[r, c], colors[i])), (i, r, c)
    # Well outside both: the original image.
    outside = ~np.any(masks, -1)
    for r, c in [(0, 31), (23, 0), (1, 20), (20, 8), (6, 26)]:
        assert outside[r, c]
        assert np.array_equal(png_pixel(png, ax, c, r), image[r, c])
    assert [t.get_text() for t in ax.texts] == ["square 0.900", "circle 0.750"]
    assert ax.get_title() == "two"
    rects = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    assert [linestyle(r) for r in rects] == ["--", "--"]
    assert [r.get_xy() for r in rects] == [(3, 3), (18, 10)]


def test_display_instances_with_no_instances_draws_the_plain_image(scene, capsys):
    image = scene[0]
    png, (ax,) = drawn(visualize.display_instances, image, np.zeros((0, 4), np.int32),
                       np.zeros((24, 32, 0), bool), np.zeros((0,), np.int32), CLASS_NAMES,
                       np.zeros((0,)), figsize=(4, 3))
    assert "*** No instances to display ***" in capsys.readouterr().out
    shown = np.array([[png_pixel(png, ax, c, r) for c in range(32)] for r in range(24)])
    assert np.array_equal(shown, image)
    assert not ax.patches and not ax.texts


def test_display_instances_rejects_inconsistent_inputs(scene):
    image, boxes, masks, class_ids = scene
    with pytest.raises(ValueError, match="counts"):
        visualize.display_instances(image, boxes, masks[..., :1], class_ids, CLASS_NAMES)
    with pytest.raises(ValueError, match="counts"):
        visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, np.array([0.5]))
    with pytest.raises(ValueError, match="same height and width"):
        visualize.display_instances(image, boxes, masks[:20], class_ids, CLASS_NAMES)
    with pytest.raises(ValueError, match="out of range"):
        visualize.display_instances(image, boxes, masks, np.array([1, 4]), CLASS_NAMES)
    assert not plt.get_fignums()  # failed before creating a figure


def test_display_instances_options_and_caller_axes(scene, tmp_path):
    image, boxes, masks, class_ids = scene
    fig, ax = plt.subplots(figsize=(4, 3))
    path = tmp_path / "options.png"
    out = visualize.display_instances(image, boxes, masks, class_ids, CLASS_NAMES, ax=ax,
                                      show_mask=False, show_bbox=False, captions=["a", "b"],
                                      colors=[(1, 0, 0), (0, 1, 0)], save_path=path)
    assert out is None and plt.fignum_exists(fig.number)  # the caller's figure stays open
    png = read_png(path)
    assert np.array_equal(png_pixel(png, ax, 9, 10), image[10, 9])  # no fill with show_mask=False
    assert not any(isinstance(p, matplotlib.patches.Rectangle) for p in ax.patches)
    outlines = [p for p in ax.patches if isinstance(p, matplotlib.patches.Polygon)]
    assert len(outlines) == 2  # outlines are drawn even without the fill, as in matterport
    assert [t.get_text() for t in ax.texts] == ["a", "b"]
    # Without scores the caption is the class name.
    _, (ax2,) = drawn(visualize.display_instances, image, boxes, masks, class_ids, CLASS_NAMES,
                      figsize=(2, 2))
    assert [t.get_text() for t in ax2.texts] == ["square", "circle"]


@pytest.mark.parametrize("kind", ["gray", "gray1", "float01", "rgba", "uint16"])
def test_display_instances_converts_other_image_kinds(kind):
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    rgb = np.repeat(gray[..., None], 3, -1)
    image = {"gray": gray, "gray1": gray[..., None], "float01": rgb / 255.0,
             "rgba": np.dstack([rgb, np.full_like(gray, 9)]),
             "uint16": rgb.astype(np.uint16) * 257}[kind]
    if kind == "uint16":
        image[0, 0] = 65535  # rescaled by the maximum: v * 257 * 255 / 65535 == v
    masks = square_masks((12, 16), [(2, 2, 10, 10)])
    png, (ax,) = drawn(visualize.display_instances, image, utils.extract_bboxes(masks), masks,
                       np.array([3]), CLASS_NAMES, figsize=(4, 3), colors=[(0, 1, 0)])
    expected_plain = rgb[1, 14]
    if kind in ("float01", "uint16"):  # rescaling in floating point may land a hair below the integer
        assert np.abs(png_pixel(png, ax, 14, 1).astype(int) - expected_plain).max() <= 1
    else:
        assert np.array_equal(png_pixel(png, ax, 14, 1), expected_plain)
    inside = png_pixel(png, ax, 6, 7).astype(int)
    assert np.abs(inside - blend(rgb[7, 6], (0, 1, 0))).max() <= 1


def test_display_instances_handles_tiny_and_large_images():
    one = np.array([[[10, 20, 30]]], np.uint8)
    png, (ax,) = drawn(visualize.display_instances, one, np.array([[0, 0, 1, 1]]),
                       np.ones((1, 1, 1), bool), np.array([1]), CLASS_NAMES, figsize=(2, 2),
                       captions=[""], colors=[(1, 1, 1)])
    assert np.array_equal(png_pixel(png, ax, 0, 0), blend(one[0, 0], (1, 1, 1)))
    plt.close("all")

    large = np.full((1200, 2000, 3), 40, np.uint8)
    masks = square_masks((1200, 2000), [(100, 100, 1100, 1000)])
    png, (ax,) = drawn(visualize.display_instances, large, utils.extract_bboxes(masks), masks,
                       np.array([2]), CLASS_NAMES, figsize=(4, 3), colors=[(0, 0, 1)])
    assert np.abs(png_pixel(png, ax, 500, 700).astype(int) - blend([40] * 3, (0, 0, 1))).max() <= 1
    assert np.array_equal(png_pixel(png, ax, 1500, 600), [40, 40, 40])


# ---------------------------------------------------------------- evaluation plots

@pytest.fixture
def evaluation():
    """3 GT; predictions (unsorted): C shifted by 2 px (0.6), A exact (0.9), B exact but wrong class (0.8)."""
    gt_masks = square_masks((40, 40), [(2, 2, 12, 12), (20, 20, 30, 30), (2, 25, 12, 35)])
    gt_class_ids = np.array([1, 2, 1])
    pred_masks = square_masks((40, 40), [(2, 27, 12, 37), (2, 2, 12, 12), (20, 20, 30, 30)])
    pred_class_ids = np.array([1, 1, 1])
    pred_scores = np.array([0.6, 0.9, 0.8])
    return (utils.extract_bboxes(gt_masks), gt_class_ids, gt_masks,
            utils.extract_bboxes(pred_masks), pred_class_ids, pred_scores, pred_masks)


def test_plot_precision_recall_shows_compute_ap_output(evaluation):
    AP, precisions, recalls, _ = utils.compute_ap(*evaluation)
    assert AP == pytest.approx(5 / 9)  # 1/3 * 1 + 1/3 * 2/3 + 1/3 * 0
    png, (ax,) = drawn(visualize.plot_precision_recall, AP, precisions, recalls)
    assert ax.get_title() == "Precision-Recall Curve. AP@50 = 0.556"
    x, y = ax.lines[0].get_data()
    assert np.allclose(x, recalls) and np.allclose(y, precisions)
    # The curve's flat stretch at precision 2/3 between recall 1/3 and 2/3 is drawn in the line colour.
    png = png.astype(int)
    line_rgb = np.round(np.array(matplotlib.colors.to_rgb(ax.lines[0].get_color())) * 255)
    dx, dy = ax.transData.transform((0.5, 2 / 3))
    r, c = int(png.shape[0] - dy), int(dx)
    patch = png[r - 2:r + 3, c - 2:c + 3].reshape(-1, 3)
    assert np.abs(patch - line_rgb).sum(-1).min() <= 30
    assert np.array_equal(png[r - 20, c], [255, 255, 255])


def test_plot_overlaps_labels_cells_of_compute_ap_overlaps(evaluation):
    _, _, _, overlaps = utils.compute_ap(*evaluation)
    gt_class_ids, pred_class_ids, pred_scores = evaluation[1], evaluation[4], evaluation[5]
    png, (ax, *_) = drawn(visualize.plot_overlaps, gt_class_ids, pred_class_ids, pred_scores,
                          overlaps, CLASS_NAMES)
    # Rows follow compute_matches' descending-score order: A (0.9), B (0.8), shifted C (0.6).
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "square (0.90)", "square (0.80)", "square (0.60)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["square", "circle", "square"]
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells[(0, 0)] == "1.000\nmatch"
    assert cells[(1, 1)] == "1.000\nwrong"
    assert cells[(2, 2)] == "0.667\nmatch"
    assert cells[(0, 1)] == "0.000\n"
    png = png.astype(int)
    for (i, j), value in [((0, 0), 1.0), ((2, 2), 2 / 3), ((0, 1), 0.0)]:
        expected = np.round(np.array(plt.cm.Blues(value)[:3]) * 255)
        assert np.abs(png_pixel(png, ax, j + 0.4, i + 0.4) - expected).max() <= 2
    with pytest.raises(ValueError, match="overlaps has shape"):
        visualize.plot_overlaps(gt_class_ids, pred_class_ids[:2], pred_scores[:2], overlaps, CLASS_NAMES)


def test_display_differences_colours_gt_green_predictions_red(evaluation):
    gt_box, gt_class_id, gt_mask, pred_box, pred_class_id, pred_score, pred_mask = evaluation
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    png, (ax,) = drawn(visualize.display_differences, image, *evaluation, CLASS_NAMES)
    assert ax.get_title().startswith("Ground Truth and Detections")
    # Each prediction's caption "score / IoU" sits on its own box, although the input was unsorted.
    captions = {t.get_text(): t.xy for t in ax.texts if t.get_text()}
    assert captions == {"0.90 / 1.00": (2, 2), "0.80 / 1.00": (20, 20), "0.60 / 0.67": (27, 2)}
    rects = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    edges = [matplotlib.colors.to_hex(r.get_edgecolor()[:3]) for r in rects]
    assert edges == ["#00ff00"] * 3 + ["#ff0000"] * 3
    green, red = (0, 1, 0), (1, 0, 0)
    assert np.array_equal(png_pixel(png, ax, 26, 8), blend(image[8, 26], green))  # GT C only
    assert np.array_equal(png_pixel(png, ax, 36, 8), blend(image[8, 36], red))  # prediction only
    assert np.array_equal(png_pixel(png, ax, 7, 8), blend(blend(image[8, 7], green), red))  # both
    assert np.array_equal(png_pixel(png, ax, 10, 35), image[35, 10])  # neither


# ---------------------------------------------------------------- grids, RoIs, boxes

def test_display_images_shows_each_image_with_its_title():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    heat = np.linspace(0, 1, 100).reshape(10, 10)
    png, axes = drawn(visualize.display_images, [rgb, heat], titles=["rgb", "heat"], cols=2)
    assert [a.get_title() for a in axes] == ["rgb", "heat"]
    assert axes[0].get_subplotspec().get_geometry()[:2] == (1, 2)  # no empty extra row
    for r, c in [(0, 0), (3, 7), (9, 9)]:
        assert np.array_equal(png_pixel(png, axes[0], c, r), rgb[r, c])
    # The 2-D float array is colour-mapped over its range, not truncated to zeros.
    low, high = (png_pixel(png, axes[1], c, r) for r, c in [(0, 0), (9, 9)])
    viridis = plt.get_cmap("viridis")
    assert np.abs(low.astype(int) - np.round(np.array(viridis(0.0)[:3]) * 255)).max() <= 2
    assert np.abs(high.astype(int) - np.round(np.array(viridis(1.0)[:3]) * 255)).max() <= 2


def test_display_top_masks_orders_classes_by_mask_area():
    image = np.full((20, 30, 3), 60, np.uint8)
    masks = square_masks((20, 30), [(0, 0, 4, 4), (5, 5, 15, 15), (10, 20, 14, 24)])
    class_ids = np.array([1, 2, 1])
    png, axes = drawn(visualize.display_top_masks, image, masks, class_ids, CLASS_NAMES, limit=3)
    assert [a.get_title() for a in axes] == ["H x W=20x30", "circle", "square", "-"]
    square_panel = np.asarray(axes[2].images[0].get_array())
    assert np.array_equal(square_panel, masks[..., 0] * 1 + masks[..., 2] * 2)
    assert not np.asarray(axes[3].images[0].get_array()).any()
    assert np.array_equal(png_pixel(png, axes[0], 12, 9), [60, 60, 60])
    # Blues_r: instance pixels pale, background dark.
    instance, background = (png_pixel(png, axes[1], c, r).astype(int) for r, c in [(10, 10), (2, 25)])
    assert instance.sum() > background.sum()


def test_draw_rois_draws_boxes_refinements_and_masks(capsys):
    image = np.full((64, 64, 3), 50, np.uint8)
    rois = np.array([[5, 5, 30, 30], [35, 35, 60, 60], [0, 0, 10, 10]])
    refined = rois + 2
    mini_masks = np.ones((3, 28, 28), np.float32)
    class_ids = np.array([1, 2, 0])
    np.random.seed(0)
    png, (ax,) = drawn(visualize.draw_rois, image, rois, refined, mini_masks, class_ids, CLASS_NAMES)
    assert ax.get_title() == "3 ROIs"
    assert "Positive ROIs:  2" in capsys.readouterr().out
    rects = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    dashed = [r for r in rects if linestyle(r) == "--"]
    solid = [r for r in rects if linestyle(r) == "-"]
    assert len(dashed) == 3 and len(solid) == 2
    assert matplotlib.colors.to_hex(dashed[-1].get_edgecolor()) == matplotlib.colors.to_hex("gray")
    assert sorted(t.get_text() for t in ax.texts) == ["circle", "square"]
    colour = solid[0].get_edgecolor()[:3]
    assert np.array_equal(png_pixel(png, ax, 25, 25), blend([50] * 3, colour))
    assert np.array_equal(png_pixel(png, ax, 3, 3), [50, 50, 50])  # negative RoI: no mask

    plt.close("all")
    _, (ax,) = drawn(visualize.draw_rois, image, rois, refined, mini_masks, class_ids, CLASS_NAMES,
                     limit=2)
    assert ax.get_title() == "Showing 2 random ROIs out of 3"


def test_draw_boxes_styles_by_visibility():
    image = np.full((40, 40, 3), 30, np.uint8)
    boxes = np.array([[2, 2, 12, 12], [15, 15, 25, 25], [26, 26, 38, 38]])
    masks = square_masks((40, 40), [tuple(b) for b in boxes])
    random.seed(5)
    colors = visualize.random_colors(3)
    random.seed(5)
    png, (ax,) = drawn(visualize.draw_boxes, image, boxes=boxes, refined_boxes=boxes + 1,
                       masks=masks, captions=["zero", "one", "two"], visibilities=[0, 1, 2],
                       title="boxes")
    rects = [p for p in ax.patches if isinstance(p, matplotlib.patches.Rectangle)]
    # Box, then its refined box (not for visibility 0).
    assert [linestyle(r) for r in rects] == [":", ":", "-", "-", "-"]
    assert matplotlib.colors.to_hex(rects[0].get_edgecolor()) == matplotlib.colors.to_hex("gray")
    assert [(t.get_text(), t.get_position()) for t in ax.texts] == [
        ("zero", (3, 3)), ("one", (16, 16)), ("two", (27, 27))]
    assert np.array_equal(png_pixel(png, ax, 34, 34), blend([30] * 3, colors[2]))
    assert np.array_equal(png_pixel(png, ax, 20, 22), blend([30] * 3, colors[1]))
    assert np.array_equal(png_pixel(png, ax, 5, 35), [30, 30, 30])
    with pytest.raises(ValueError, match="boxes or refined_boxes"):
        visualize.draw_boxes(image)


# ---------------------------------------------------------------- tables

def test_display_table_prints_aligned_text_outside_ipython(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    visualize.display_table([["NAME", "VALUE"], ["alpha", "<b>1</b>"], [2.5, None]])
    assert capsys.readouterr().out.splitlines() == ["NAME   VALUE", "alpha  1", "2.5    None"]


def test_display_table_sends_html_in_ipython(monkeypatch):
    IPython = pytest.importorskip("IPython")
    import IPython.display  # noqa: F811  (the submodule, so that it can be patched below)
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", lambda obj, raw: shown.append((obj, raw)))
    visualize.display_table([["a", "<i>b</i>"]])
    (bundle, raw), = shown
    assert raw and bundle["text/html"].startswith("<table><tr><td>a")
    assert "<i>b</i>" in bundle["text/html"] and bundle["text/plain"] == "a  b"


def test_display_weight_stats_flags_dead_and_overflowing_weights(capsys, monkeypatch):
    keras = pytest.importorskip("keras")
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(2, 3, name="conv1")(inputs)
    outputs = keras.layers.Dense(2, name="fc")(keras.layers.Flatten()(x))
    keras_model = keras.Model(inputs, outputs)
    keras_model.get_layer("fc").kernel.assign(np.full((32, 2), 2000.0, np.float32))

    class Wrapper:  # stands in for MaskRCNN: anything with a keras_model
        pass

    wrapper = Wrapper()
    wrapper.keras_model = keras_model
    visualize.display_weight_stats(wrapper)
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["WEIGHT"].split() == ["WEIGHT", "NAME", "SHAPE", "MIN", "MAX", "STD"]
    kernel = keras_model.get_layer("conv1").kernel.numpy()
    assert "(3, 3, 3, 2)" in rows["conv1/kernel"]
    assert "{:+9.4f}".format(kernel.min()).strip() in rows["conv1/kernel"]
    # Zero biases are how layers start, not dead weights.
    assert not any("***" in rows[name] for name in ("conv1/kernel", "conv1/bias", "fc/bias"))
    assert rows["fc/kernel"].startswith("fc/kernel *** dead? *** Overflow?")
    assert rows["fc/kernel"].split()[-3:] == ["+2000.0000", "+2000.0000", "+0.0000"]


# ---------------------------------------------------------------- showing

@pytest.mark.parametrize("backend", [None, "svg"])
def test_import_and_display_never_block_or_change_the_backend(backend, tmp_path):
    """A headless script (no display: matplotlib picks Agg itself), or one that chose a backend."""
    if backend is None and sys.platform == "darwin":
        pytest.skip("macOS picks its native backend even without a display")
    after = tmp_path / ("after." + (backend or "png"))
    script = (
        "import matplotlib\n"
        + (f"matplotlib.use({backend!r})\n" if backend else "")
        + "import matplotlib.pyplot as plt, numpy as np\n"
        "from mrcnn import visualize\n"
        f"assert matplotlib.get_backend().lower() == {backend or 'agg'!r}, matplotlib.get_backend()\n"
        "def no_show(*args, **kwargs): raise AssertionError('plt.show() called')\n"
        "plt.show = no_show\n"
        "m = np.zeros((8, 8, 1), bool); m[2:6, 2:6] = True\n"
        "visualize.display_instances(np.zeros((8, 8, 3), np.uint8), np.array([[2, 2, 6, 6]]), m,\n"
        "                            np.array([1]), ['BG', 'x'], figsize=(2, 2))\n"
        f"plt.savefig({str(after)!r})  # the figure is still open, as in matterport\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run([sys.executable, "-W", "error", "-c", script],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert after.exists()


@pytest.mark.parametrize("backend, interactive, with_path, shows", [
    ("agg", False, False, False),
    ("module://matplotlib_inline.backend_inline", True, True, True),
    ("inline", False, False, True),
    ("tkagg", False, False, True),    # a script with a GUI: matterport's blocking show
    ("tkagg", False, True, False),    # ... but saving to a file never blocks
    ("qtagg", True, True, True),      # IPython's interactive mode: show() does not block
])
def test_show_policy(backend, interactive, with_path, shows, scene, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr(matplotlib, "get_backend", lambda: backend)
    monkeypatch.setattr(plt, "isinteractive", lambda: interactive)
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.append(True))
    path = tmp_path / "p.png" if with_path else None
    visualize.display_instances(*scene, CLASS_NAMES, figsize=(2, 2), save_path=path)
    assert bool(shown) == shows
    assert bool(plt.get_fignums()) == (not with_path)


SAVED_DRAWINGS = {
    "display_instances": lambda **kw: visualize.display_instances(
        np.full((24, 32, 3), 90, np.uint8), np.array([[3, 3, 15, 15]]),
        square_masks((24, 32), [(3, 3, 15, 15)]), np.array([1]), CLASS_NAMES, figsize=(3, 3), **kw),
    "display_images": lambda **kw: visualize.display_images([np.eye(8)], cols=1, **kw),
    "draw_boxes": lambda **kw: visualize.draw_boxes(np.zeros((16, 16, 3), np.uint8),
                                                    boxes=np.array([[2, 2, 9, 9]]), **kw),
    "plot_precision_recall": lambda **kw: visualize.plot_precision_recall(
        0.5, np.array([1, 1, 0.5, 0]), np.array([0, 0.5, 0.5, 1]), **kw),
}


@pytest.mark.parametrize("name", SAVED_DRAWINGS)
def test_save_path_writes_the_figure_closes_it_and_returns_none(name, tmp_path):
    draw = SAVED_DRAWINGS[name]
    random.seed(0)  # the same random colours both times
    png, _ = drawn(draw)
    plt.close("all")
    path = tmp_path / f"{name}.png"
    random.seed(0)
    assert draw(save_path=path) is None
    assert not plt.get_fignums()
    assert np.array_equal(read_png(path), png)


def test_a_notebook_cell_ending_with_a_drawing_shows_it_and_prints_nothing(tmp_path, monkeypatch):
    """matterport's notebooks end cells with display_* calls, often on `ax=get_ax()`."""
    import json

    import nbformat
    from nbclient import NotebookClient

    kernel_dir = tmp_path / "jupyter" / "kernels" / "mrcnn-tests"
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mrcnn tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.path.dirname(os.path.dirname(visualize.__file__)))
    setup = ("import numpy as np, matplotlib.pyplot as plt\n"
             "from mrcnn import visualize\n"
             "image = np.full((24, 32, 3), 90, np.uint8)\n"
             "masks = np.zeros((24, 32, 1), bool); masks[3:15, 3:15] = True\n"
             "args = (image, np.array([[3, 3, 15, 15]]), masks, np.array([1]), ['BG', 'square'])")
    drawings = ["visualize.display_instances(*args, np.array([0.9]))",
                "_, ax = plt.subplots(1, figsize=(4, 4))\n"
                "visualize.display_instances(*args, ax=ax, title='Predictions')",
                "visualize.display_top_masks(image, masks, np.array([1]), ['BG', 'square'])",
                "visualize.draw_boxes(image, boxes=np.array([[3, 3, 15, 15]]))"]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in [setup, *drawings]])
    NotebookClient(nb, timeout=120, kernel_name="mrcnn-tests").execute()
    for cell in nb.cells[1:]:
        kinds = [o.output_type for o in cell.outputs]
        assert "execute_result" not in kinds, (cell.source, cell.outputs)
        assert [o for o in cell.outputs if "image/png" in o.get("data", {})], cell.source

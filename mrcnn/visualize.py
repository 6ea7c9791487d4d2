"""Display and visualisation helpers for Mask R-CNN inputs, targets and detections.

Same functions, signatures and defaults as matterport's `mrcnn/visualize.py`,
drawn with matplotlib only (no OpenCV). Every function that draws a figure
also takes a keyword-only `save_path`:

* A figure the function creates itself is shown with `plt.show()` only when
  the current matplotlib backend is interactive (Jupyter's inline backend,
  ipympl, a GUI backend). Under a non-interactive backend (Agg, the default on
  a machine without a display, as in CI) nothing is shown, nothing blocks, and
  the figure stays open so that `plt.savefig(...)` afterwards still works, as
  with matterport.
* With `save_path`, the figure is written there (PNG unless the extension says
  otherwise) and then closed if the function created it; it is still shown
  first in Jupyter or in IPython's interactive mode, but never through a
  blocking GUI `plt.show()`.
* Importing this module never selects or changes the backend.

Drawing functions return None, as matterport's did, so a notebook cell that
ends with one shows the figure and prints nothing under it. To work on the
drawing afterwards, pass your own `ax=` (display_instances,
display_differences, draw_boxes) or take `plt.gcf()`: a figure the function
created stays open unless it was shown or saved.
"""

import colorsys
import itertools
import random
import re
import sys

import matplotlib
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import lines, patches
from skimage.measure import find_contours

from mrcnn import utils

__all__ = [
    "display_images", "random_colors", "apply_mask", "display_instances", "display_differences",
    "draw_rois", "draw_box", "display_top_masks", "plot_precision_recall", "plot_overlaps",
    "draw_boxes", "display_table", "display_weight_stats",
]

try:  # matplotlib >= 3.9
    from matplotlib.backends import BackendFilter, backend_registry
    _NON_INTERACTIVE_BACKENDS = frozenset(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))
except ImportError:  # older matplotlib
    _NON_INTERACTIVE_BACKENDS = frozenset(matplotlib.rcsetup.non_interactive_bk)


############################################################
#  Showing and saving
############################################################

def _finish(fig, save_path, owns_figure):
    """Save and/or show a finished figure according to the module's policy (see module docstring)."""
    if save_path is not None:
        fig.savefig(save_path)
    if not owns_figure:
        return
    backend = matplotlib.get_backend()
    if backend.lower() not in _NON_INTERACTIVE_BACKENDS and (
            save_path is None or plt.isinteractive() or "inline" in backend):
        plt.show()
    if save_path is not None:
        plt.close(fig)


def _display_rgb(image):
    """Any image a user may pass → an HxWx3 array with values in 0..255 for blending and display.

    Grayscale (HxW, HxWx1) is repeated into three channels and an alpha
    channel is dropped. Values already in 0..255 are kept as they are (what
    matterport's `astype` did); float images in [0, 1] are scaled by 255, and
    anything else outside 0..255 (uint16, mean-subtracted floats) is rescaled
    linearly so that max → 255 and min(0, min) → 0, instead of wrapping around.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an image of shape HxW, HxWx1, HxWx3 or HxWx4, got {image.shape}.")
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    image = image[..., :3]
    if image.dtype == bool:
        return image.astype(np.uint8) * 255
    if np.issubdtype(image.dtype, np.floating):
        image = np.nan_to_num(image)
        if image.size and image.min() >= 0 and image.max() <= 1:
            return image * 255
    if image.size and (image.min() < 0 or image.max() > 255):
        lo, hi = min(0, image.min()), image.max()
        return (image.astype(np.float64) - lo) * (255 / (hi - lo))
    return image


def _draw_mask_outline(ax, mask, color):
    """Outline a mask with polygons; the mask is padded so shapes touching the image edge close."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    for verts in find_contours(padded, 0.5):
        # Undo the padding and flip (row, col) to (x, y).
        ax.add_patch(patches.Polygon(np.fliplr(verts) - 1, facecolor="none", edgecolor=color))


def _sort_by_score(scores):
    """The descending-score order `utils.compute_matches` uses, so its overlap rows line up."""
    return np.argsort(scores)[::-1]


############################################################
#  Visualization
############################################################

def display_images(images, titles=None, cols=4, cmap=None, norm=None,
                   interpolation=None, *, save_path=None):
    """Show a list of images in a grid, `cols` per row, each with an optional title.

    Colour images (HxWx3/4) are shown as RGB; 2-D arrays (and HxWx1) through
    `cmap`/`norm`, autoscaled. Unlike matterport, 2-D arrays are not cast to
    uint8 first (which zeroed float heatmaps) and no empty extra row is added
    when the count is a multiple of `cols`.
    """
    titles = titles if titles is not None else [""] * len(images)
    rows = max(1, -(-len(images) // cols))
    fig = plt.figure(figsize=(14, max(1, 14 * rows // cols)))
    for i, (image, title) in enumerate(zip(images, titles), start=1):
        ax = fig.add_subplot(rows, cols, i)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        if image.ndim == 2:
            image = image.astype(np.uint8) if image.dtype == bool else image
        else:
            image = _display_rgb(image).astype(np.uint8)
        ax.imshow(image, cmap=cmap, norm=norm, interpolation=interpolation)
    _finish(fig, save_path, owns_figure=True)


def random_colors(N, bright=True):
    """N visually distinct RGB colours (floats in 0..1): evenly spaced hues, shuffled.

    Uses Python's global `random` module like matterport, so `random.seed(s)`
    reproduces matterport's colours for the same seed.
    """
    brightness = 1.0 if bright else 0.7
    colors = [colorsys.hsv_to_rgb(i / N, 1, brightness) for i in range(N)]
    random.shuffle(colors)
    return colors


def apply_mask(image, mask, color, alpha=0.5):
    """Blend `color` (RGB floats in 0..1) into `image` where `mask == 1`; return the result.

    Inside the mask each of the first three channels becomes
    `image * (1 - alpha) + alpha * color * 255`, cast back to the image's dtype
    (so an integer image truncates, exactly as matterport's in-place
    assignment did). Unlike matterport, the input image is not modified: a
    blended copy is returned. Matterport modified the image in place *and*
    returned it; code that uses the return value (all of matterport's own
    callers do) sees identical values.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] < 3:
        raise ValueError(f"apply_mask needs an HxWx3 image, got shape {image.shape}; "
                         "repeat a grayscale image into 3 channels first.")
    inside = np.asarray(mask) == 1
    out = image.copy()
    for c in range(3):
        out[:, :, c] = np.where(inside, image[:, :, c] * (1 - alpha) + alpha * color[c] * 255,
                                image[:, :, c])
    return out


def display_instances(image, boxes, masks, class_ids, class_names,
                      scores=None, title="",
                      figsize=(16, 16), ax=None,
                      show_mask=True, show_bbox=True,
                      colors=None, captions=None, *, save_path=None):
    """Draw instances on an image: blended masks, mask outlines, dashed boxes and captions.

    boxes: [N, (y1, x1, y2, x2)] in image pixels; masks: [H, W, N];
    class_ids: [N]; class_names: the dataset's class names; scores: optional [N].
    Captions default to "class score" (score with 3 decimals) or the class
    name alone without scores. Instances whose box is all zeros are skipped,
    as in matterport. With N = 0 it prints "*** No instances to display ***"
    and still draws the image. Grayscale, RGBA and float images are converted
    for display (see `_display_rgb`). Inconsistent counts or shapes raise
    ValueError (matterport asserted). Unlike matterport, a score of exactly 0
    is still printed, and text offsets do not depend on the image size.
    """
    boxes, masks, class_ids = np.asarray(boxes), np.asarray(masks), np.asarray(class_ids)
    image = _display_rgb(image)
    N = len(boxes)
    # An empty detection may come with masks of any empty shape.
    n_masks = masks.shape[-1] if masks.ndim == 3 else (0 if masks.size == 0 else None)
    counts = {"boxes": N, "masks": n_masks, "class_ids": len(class_ids)}
    if scores is not None:
        counts["scores"] = len(scores)
    if captions:
        counts["captions"] = len(captions)
    if len(set(counts.values())) != 1:
        raise ValueError(f"display_instances needs boxes [N, 4], masks [H, W, N] and N class_ids "
                         f"(and N scores/captions if given); got counts {counts} and "
                         f"masks of shape {masks.shape}.")
    if N and masks.shape[:2] != image.shape[:2]:
        raise ValueError(f"masks are {masks.shape[:2]} but the image is {image.shape[:2]}; "
                         "they must have the same height and width.")
    if not captions and N and (class_ids.min() < 0 or class_ids.max() >= len(class_names)):
        raise ValueError(f"class_ids {class_ids.tolist()} out of range for "
                         f"{len(class_names)} class_names.")
    if not N:
        print("\n*** No instances to display *** \n")

    owns_figure = ax is None
    if owns_figure:
        _, ax = plt.subplots(1, figsize=figsize)
    colors = colors if colors is not None else random_colors(N)

    # Leave a margin so boxes on the image border stay visible.
    height, width = image.shape[:2]
    margin = min(10, 0.5 + 0.05 * max(height, width))
    ax.set_ylim(height + margin, -margin)
    ax.set_xlim(-margin, width + margin)
    ax.axis("off")
    ax.set_title(title)

    masked_image = image.astype(np.uint32)
    for i in range(N):
        color = colors[i]
        if not np.any(boxes[i]):
            continue  # no box: the instance was likely lost in cropping
        y1, x1, y2, x2 = boxes[i][:4]
        if show_bbox:
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=0.7,
                                           linestyle="dashed", edgecolor=color, facecolor="none"))
        if captions:
            caption = captions[i]
        else:
            label = class_names[int(class_ids[i])]
            caption = label if scores is None else "{} {:.3f}".format(label, scores[i])
        ax.annotate(caption, (x1, y1), xytext=(1, -1), textcoords="offset points",
                    va="top", color="w", size=11)
        mask = masks[:, :, i]
        if show_mask:
            masked_image = apply_mask(masked_image, mask, color)
        _draw_mask_outline(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    _finish(ax.figure, save_path, owns_figure)


def display_differences(image,
                        gt_box, gt_class_id, gt_mask,
                        pred_box, pred_class_id, pred_score, pred_mask,
                        class_names, title="", ax=None,
                        show_mask=True, show_box=True,
                        iou_threshold=0.5, score_threshold=0.5, *, save_path=None):
    """Draw ground truth (green) and predictions (red) together, matched with `utils.compute_matches`.

    Each prediction is captioned "score / IoU": the IoU with its matched GT,
    or its best IoU with any GT when unmatched. Predictions are put in the
    descending-score order that `compute_matches` uses before captioning;
    matterport paired the sorted IoU rows with unsorted predictions, which
    mislabelled captions whenever predictions were not already sorted.
    """
    order = _sort_by_score(np.asarray(pred_score))
    pred_box, pred_class_id = np.asarray(pred_box)[order], np.asarray(pred_class_id)[order]
    pred_score, pred_mask = np.asarray(pred_score)[order], np.asarray(pred_mask)[..., order]
    gt_match, pred_match, overlaps = utils.compute_matches(
        gt_box, gt_class_id, gt_mask,
        pred_box, pred_class_id, pred_score, pred_mask,
        iou_threshold=iou_threshold, score_threshold=score_threshold)
    colors = [(0, 1, 0, .8)] * len(gt_match) + [(1, 0, 0, 1)] * len(pred_match)
    class_ids = np.concatenate([gt_class_id, pred_class_id])
    scores = np.concatenate([np.zeros([len(gt_match)]), pred_score])
    boxes = np.concatenate([gt_box, pred_box])
    masks = np.concatenate([gt_mask, pred_mask], axis=-1)
    ious = [overlaps[i, int(pred_match[i])] if pred_match[i] > -1
            else (overlaps[i].max() if overlaps.shape[1] else 0.0)
            for i in range(len(pred_match))]
    captions = [""] * len(gt_match) + ["{:.2f} / {:.2f}".format(s, iou)
                                       for s, iou in zip(pred_score, ious)]
    title = title or "Ground Truth and Detections\n GT=green, pred=red, captions: score/IoU"
    display_instances(image, boxes, masks, class_ids, class_names, scores, ax=ax,
                      show_bbox=show_box, show_mask=show_mask,
                      colors=colors, captions=captions, title=title, save_path=save_path)


def draw_rois(image, rois, refined_rois, mask, class_ids, class_names, limit=10, *, save_path=None):
    """Draw training RoIs (dashed; gray for negatives), their refined boxes and masks.

    rois, refined_rois: [N, (y1, x1, y2, x2)] in image pixels; mask: [N, h, w]
    class-specific mini masks; class_ids: [N] (0 = negative). At most `limit`
    RoIs, picked with numpy's global RNG, are drawn, each in a random colour.
    Prints the positive/negative counts.
    """
    rois, refined_rois, class_ids = np.asarray(rois), np.asarray(refined_rois), np.asarray(class_ids)
    masked_image = _display_rgb(image).astype(np.uint32)
    ids = np.arange(rois.shape[0], dtype=np.int32)
    if ids.shape[0] > limit:
        ids = np.random.choice(ids, limit, replace=False)

    fig, ax = plt.subplots(1, figsize=(12, 12))
    if rois.shape[0] > limit:
        ax.set_title("Showing {} random ROIs out of {}".format(len(ids), rois.shape[0]))
    else:
        ax.set_title("{} ROIs".format(len(ids)))
    ax.set_ylim(masked_image.shape[0] + 20, -20)
    ax.set_xlim(-50, masked_image.shape[1] + 20)
    ax.axis("off")

    for i in ids:
        color = np.random.rand(3)
        class_id = class_ids[i]
        y1, x1, y2, x2 = rois[i]
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2,
                                       edgecolor=color if class_id else "gray",
                                       facecolor="none", linestyle="dashed"))
        if class_id:
            ry1, rx1, ry2, rx2 = refined_rois[i]
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            # Connect the top-left corners of the RoI and its refinement.
            ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
            ax.text(rx1, ry1 + 8, "{}".format(class_names[class_id]),
                    color="w", size=11, backgroundcolor="none")
            m = utils.unmold_mask(mask[i], rois[i][:4].astype(np.int32), masked_image.shape)
            masked_image = apply_mask(masked_image, m, color)
    ax.imshow(masked_image.astype(np.uint8))

    positives = int(np.sum(class_ids > 0))
    print("Positive ROIs: ", positives)
    print("Negative ROIs: ", int(np.sum(class_ids == 0)))
    print("Positive Ratio: {:.2f}".format(positives / class_ids.shape[0] if class_ids.shape[0] else 0))
    _finish(fig, save_path, owns_figure=True)


def draw_box(image, box, color):
    """Draw a 2-pixel box outline into `image` in place and return it (as matterport did).

    box: (y1, x1, y2, x2) with y2/x2 exclusive; the outline lies on the box's
    own border pixels, clipped to the image, so boxes touching the edge keep
    all four sides. color: 3 values for an RGB image (a scalar for grayscale).
    Matterport drew with cv2.rectangle; OpenCV is not a dependency here.
    """
    h, w = image.shape[:2]
    y1, x1, y2, x2 = (int(v) for v in box[:4])
    y1, y2 = np.clip([y1, y2], 0, h)
    x1, x2 = np.clip([x1, x2], 0, w)
    if y2 <= y1 or x2 <= x1:
        return image
    image[y1:min(y1 + 2, y2), x1:x2] = color
    image[max(y2 - 2, y1):y2, x1:x2] = color
    image[y1:y2, x1:min(x1 + 2, x2)] = color
    image[y1:y2, max(x2 - 2, x1):x2] = color
    return image


def display_top_masks(image, mask, class_ids, class_names, limit=4, *, save_path=None):
    """Show the image next to the union masks of its `limit` largest classes (by mask area).

    Each class panel labels its instances 1, 2, ...; missing panels show "-".
    """
    mask, class_ids = np.asarray(mask), np.asarray(class_ids)
    to_display = [image]
    titles = ["H x W={}x{}".format(image.shape[0], image.shape[1])]
    unique_class_ids = np.unique(class_ids)
    mask_area = [np.sum(mask[:, :, np.where(class_ids == i)[0]]) for i in unique_class_ids]
    top_ids = [v[0] for v in sorted(zip(unique_class_ids, mask_area),
                                    key=lambda r: r[1], reverse=True) if v[1] > 0]
    for i in range(limit):
        class_id = top_ids[i] if i < len(top_ids) else -1
        m = mask[:, :, np.where(class_ids == class_id)[0]]
        to_display.append(np.sum(m * np.arange(1, m.shape[-1] + 1), -1))
        titles.append(class_names[class_id] if class_id != -1 else "-")
    display_images(to_display, titles=titles, cols=limit + 1, cmap="Blues_r", save_path=save_path)


def plot_precision_recall(AP, precisions, recalls, *, save_path=None):
    """Plot a precision-recall curve (e.g. from `utils.compute_ap`) titled with AP@50."""
    fig, ax = plt.subplots(1)
    ax.set_title("Precision-Recall Curve. AP@50 = {:.3f}".format(AP))
    ax.set_ylim(0, 1.1)
    ax.set_xlim(0, 1.1)
    ax.plot(recalls, precisions)
    _finish(fig, save_path, owns_figure=True)


def plot_overlaps(gt_class_ids, pred_class_ids, pred_scores,
                  overlaps, class_names, threshold=0.5, *, save_path=None):
    """Grid of IoUs between predictions (rows) and ground truth (columns), as from `utils.compute_ap`.

    Cells above `threshold` are marked "match" (same class) or "wrong".
    `overlaps` rows follow `compute_matches`' descending-score order, so the
    prediction labels are sorted the same way here (matterport did not, which
    mislabelled rows for unsorted predictions); class-0 entries (padding) are
    dropped, from the scores too.
    """
    gt_class_ids = np.asarray(gt_class_ids)
    gt_class_ids = gt_class_ids[gt_class_ids != 0]
    pred_class_ids, pred_scores = np.asarray(pred_class_ids), np.asarray(pred_scores)
    keep = pred_class_ids != 0
    order = _sort_by_score(pred_scores[keep])
    pred_class_ids, pred_scores = pred_class_ids[keep][order], pred_scores[keep][order]
    overlaps = np.asarray(overlaps)
    if overlaps.shape != (len(pred_class_ids), len(gt_class_ids)):
        raise ValueError(f"overlaps has shape {overlaps.shape} but there are {len(pred_class_ids)} "
                         f"predictions and {len(gt_class_ids)} ground-truth instances.")

    fig, ax = plt.subplots(1, figsize=(12, 10))
    ax.imshow(overlaps, interpolation="nearest", cmap=plt.cm.Blues)
    ax.set_yticks(np.arange(len(pred_class_ids)),
                  ["{} ({:.2f})".format(class_names[int(c)], pred_scores[i])
                   for i, c in enumerate(pred_class_ids)])
    ax.set_xticks(np.arange(len(gt_class_ids)),
                  [class_names[int(c)] for c in gt_class_ids], rotation=90)

    thresh = overlaps.max() / 2. if overlaps.size else 0
    for i, j in itertools.product(range(overlaps.shape[0]), range(overlaps.shape[1])):
        text = ""
        if overlaps[i, j] > threshold:
            text = "match" if gt_class_ids[j] == pred_class_ids[i] else "wrong"
        color = ("white" if overlaps[i, j] > thresh
                 else "black" if overlaps[i, j] > 0
                 else "grey")
        ax.text(j, i, "{:.3f}\n{}".format(overlaps[i, j], text),
                horizontalalignment="center", verticalalignment="center",
                fontsize=9, color=color)
    ax.set_xlabel("Ground Truth")
    ax.set_ylabel("Predictions")
    fig.tight_layout()
    _finish(fig, save_path, owns_figure=True)


def draw_boxes(image, boxes=None, refined_boxes=None,
               masks=None, captions=None, visibilities=None,
               title="", ax=None, *, save_path=None):
    """Draw boxes, refined boxes, masks and captions with per-box prominence.

    boxes: [N, (y1, x1, y2, x2)] drawn dotted; refined_boxes: [N, 4] drawn
    solid and joined to their box's top-left corner; masks: [H, W, N];
    captions: N strings; visibilities: N values, 0 (gray, refined box hidden),
    1 (colour, dotted) or 2 (colour, solid).
    """
    if boxes is None and refined_boxes is None:
        raise ValueError("draw_boxes needs boxes or refined_boxes.")
    N = len(boxes) if boxes is not None else len(refined_boxes)
    owns_figure = ax is None
    if owns_figure:
        _, ax = plt.subplots(1, figsize=(12, 12))
    colors = random_colors(N)

    # Leave room for boxes that extend past the image.
    margin = image.shape[0] // 10
    ax.set_ylim(image.shape[0] + margin, -margin)
    ax.set_xlim(-margin, image.shape[1] + margin)
    ax.axis("off")
    ax.set_title(title)

    masked_image = _display_rgb(image).astype(np.uint32)
    styles = {0: ("gray", "dotted", 0.5), 1: (None, "dotted", 1), 2: (None, "solid", 1)}
    for i in range(N):
        visibility = visibilities[i] if visibilities is not None else 1
        color, style, alpha = styles[visibility]
        color = color or colors[i]
        if boxes is not None:
            if not np.any(boxes[i]):
                continue  # no box: the instance was likely lost in cropping
            y1, x1, y2, x2 = boxes[i][:4]
            ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, linewidth=2, alpha=alpha,
                                           linestyle=style, edgecolor=color, facecolor="none"))
        if refined_boxes is not None and visibility > 0:
            ry1, rx1, ry2, rx2 = np.asarray(refined_boxes[i][:4]).astype(np.int32)
            ax.add_patch(patches.Rectangle((rx1, ry1), rx2 - rx1, ry2 - ry1, linewidth=2,
                                           edgecolor=color, facecolor="none"))
            if boxes is not None:
                ax.add_line(lines.Line2D([x1, rx1], [y1, ry1], color=color))
        if captions is not None:
            # Captions go on the refined box when there is one.
            if refined_boxes is not None:
                y1, x1 = np.asarray(refined_boxes[i][:2]).astype(np.int32)
            ax.text(x1, y1, captions[i], size=11, verticalalignment="top",
                    color="w", backgroundcolor="none",
                    bbox={"facecolor": color, "alpha": 0.5, "pad": 2, "edgecolor": "none"})
        if masks is not None:
            mask = masks[:, :, i]
            masked_image = apply_mask(masked_image, mask, matplotlib.colors.to_rgb(color))
            _draw_mask_outline(ax, mask, color)
    ax.imshow(masked_image.astype(np.uint8))
    _finish(ax.figure, save_path, owns_figure)


def display_table(table):
    """Show rows of values as a table: HTML in Jupyter, aligned plain text elsewhere.

    Cells are shown with `str()`; HTML inside a cell (such as the red alerts of
    `display_weight_stats`) renders in Jupyter and is stripped from the text
    form. Outside IPython the text is printed.
    """
    table = [[str(col) for col in row] for row in table]
    html = "<table>" + "".join(
        "<tr>" + "".join("<td>{:40}</td>".format(col) for col in row) + "</tr>"
        for row in table) + "</table>"
    plain = [[re.sub(r"<[^>]*>", "", col) for col in row] for row in table]
    widths = [max(len(row[c]) for row in plain if c < len(row))
              for c in range(max((len(row) for row in plain), default=0))]
    text = "\n".join("  ".join(col.ljust(widths[c]) for c, col in enumerate(row)).rstrip()
                     for row in plain)
    ipython = sys.modules.get("IPython")
    if ipython is not None and ipython.get_ipython() is not None:
        import IPython.display
        IPython.display.display({"text/html": html, "text/plain": text}, raw=True)
    else:
        print(text)


def display_weight_stats(model):
    """Table of every weight's name, shape, min, max and std, flagging suspicious ones.

    `model` is a `MaskRCNN` (anything with a `keras_model`) or a Keras model.
    A weight whose values are all equal is flagged "dead?" (except biases,
    which start at zero; matterport exempted only Conv2D biases), one with
    |value| > 1000 "Overflow?".
    Names are Keras 3 variable paths (e.g. "conv1/kernel"); matterport showed
    TF1 tensor names ("conv1/kernel:0").
    """
    keras_model = getattr(model, "keras_model", model)
    table = [["WEIGHT NAME", "SHAPE", "MIN", "MAX", "STD"]]
    for layer in keras_model.layers:
        for weight in layer.weights:
            w = np.asarray(weight)
            name = getattr(weight, "path", weight.name)
            alert = ""
            if w.size and w.min() == w.max() and name.split("/")[-1] != "bias":
                alert += " <span style='color:red'>*** dead?</span>"
            if w.size and (np.abs(w.min()) > 1000 or np.abs(w.max()) > 1000):
                alert += " <span style='color:red'>*** Overflow?</span>"
            table.append([
                name + alert,
                str(w.shape),
                "{:+9.4f}".format(w.min()) if w.size else "",
                "{:+10.4f}".format(w.max()) if w.size else "",
                "{:+9.4f}".format(w.std()) if w.size else "",
            ])
    display_table(table)

"""bench_model.py's cases on torchvision's Mask R-CNN, and both side by side; prints JSON lines.

The peer runs in a venv of its own (never a dependency of mrcnn), e.g.:

    python3 -m venv ~/peer-venv
    ~/peer-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy

    # one case on the peer: a JSON line with bench_model.py's fields
    ~/peer-venv/bin/python benchmarks/peer_torchvision.py --case train_r50_8x128 [--repeat 5] [--threads N]
    # both sides, with the library's python: per case and round ours, then the peer, each in a
    # fresh process (so peak RSS is its own and drift on the machine hits both)
    python benchmarks/peer_torchvision.py compare --peer-python ~/peer-venv/bin/python \\
        [--cases detect_r50_8x128 train_r50_8x128] [--repeat 5] [--rounds 2] [--threads N]

compare prints each run's line with "side" and "round", then per case and figure
{"case", "figure", "ours", "peer", "ratio"}: medians over the rounds, ratio = ours / peer.
Both sides get the same --threads (TensorFlow intra- and inter-op threads; torch
set_num_threads and set_num_interop_threads) and the same environment (GLIBC_TUNABLES
is recorded). The peer mode imports torch, torchvision, numpy and the standard library
only (and bench_model.py's stdlib-only helpers); compare imports no torch.

The peer model, random init as ours: torchvision.models.detection.MaskRCNN, 4 classes, on
resnet_fpn_backbone (ResNet-50/101 + FPN, all 5 stages trainable, FrozenBatchNorm2d:
BatchNorm with fixed statistics like ours with TRAIN_BN False; maskrcnn_resnet50_fpn
without pretrained weights would use nn.BatchNorm2d in batch-statistics mode instead),
with torchvision's zero_init_residual (each residual branch's last BatchNorm scale 0; the
convolutions run all the same): from plain random weights ResNet-101's features reach 5e5,
every proposal decodes to a box of no width and torchvision's small-box filter drops them
all, so no RoI work would be done (ours pads to fixed counts whatever the values).
Settings of bench_model.make_config: min_size = max_size = the image size (else the
transform resizes to 800); anchors 32..512 px (8..128 for 128 px), ratios 0.5, 1, 2 per
level; RPN NMS 0.7, 1000 proposals in inference, 2000 in training; RoIAlign 7x7 and 14x14
with 1 sample per bin (ours ROI_ALIGN_SAMPLING_RATIO 1; torchvision's default is 2);
box_score_thresh 0 and box_nms_thresh 0.3 (DETECTION_NMS_THRESHOLD), 100 detections per
image, masks pasted to image size; training: 256 RPN anchors per image, 200 RoIs (32 for
128 px) with 0.33 positives, SGD lr 0.001, momentum 0.9, weight decay 1e-4, gradient
clipping at global norm 5 (GRADIENT_CLIP_NORM).
  detect_*: uint8 random images as ours, converted to float inside the timed call; first
    call and median of --repeat calls (all images of a case in one call).
  train_*: forward + backward + optimizer step, after one warm-up step, median of
    --repeat; shapes-like batches (1 to 4 squares, discs and triangles of ShapesDataset's
    sizes, drawn with numpy) made beforehand, their time reported as data prep.

Differences in the work that remain:
  - RPN pre-NMS top-n: torchvision keeps the top n anchors of each FPN level, ours the top
    PRE_NMS_LIMIT (6000) over all levels. The peer's n per level is the smallest that
    keeps as many anchors in all as ours (1308 per level at 1024 px, 6000 in all; every
    one of the 4092 anchors at 128 px, as ours), so NMS sees as many boxes, spread
    differently over the levels.
  - Detections: torchvision scores every foreground class of each RoI (3000 candidates for
    1000 RoIs), ours (DETECTION_CLASS_MODE "argmax") only the best class of each.
  - Training: torchvision matches anchors to the ground truth inside the step (ours in data
    prep), adds the GT boxes to the proposals, runs the mask head on the positive RoIs only
    (ours on the first int(0.33 x RoIs) rows of each image, where they all are: 66 of 200
    at 1024 px, 10 of 32 at 128 px) and crops the full-size GT masks (ours 56x56 mini masks); its
    FrozenBatchNorm2d has no trainable gamma and beta (ours trains them).
  - torchvision normalises with ImageNet mean and std and passes each image through a
    bilinear resize at scale 1 (and, in training, its masks); ours subtracts MEAN_PIXEL.
  - The RPN head's 3x3 conv has 256 channels (matterport's 512).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from bench_model import CASES, environment, parse_case, peak_rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))
PRE_NMS_LIMIT = 6000
STRIDES = (4, 8, 16, 32, 64)
FIGURES = {"detect": ["first_call_s", "steady_median_s", "peak_rss_mb"],
           "train": ["first_step_s", "step_median_s", "data_prep_per_batch_median_s", "peak_rss_mb"]}


def per_level_top_n(size, total=PRE_NMS_LIMIT):
    """The smallest per-level top-n that keeps `total` anchors (or all) over the FPN levels."""
    counts = [3 * (size // stride) ** 2 for stride in STRIDES]
    n = 0
    while sum(min(n, c) for c in counts) < min(total, sum(counts)):
        n += 1
    return n


def make_model(backbone, size):
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.resnet import Bottleneck
    from torchvision.ops import MultiScaleRoIAlign

    small = size <= 128  # matterport's shapes sample, as bench_model.make_config
    scales = (8, 16, 32, 64, 128) if small else (32, 64, 128, 256, 512)
    levels = ["0", "1", "2", "3"]
    top_n = per_level_top_n(size)
    fpn = resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5)
    for block in fpn.body.modules():  # zero_init_residual (see the docstring)
        if isinstance(block, Bottleneck):
            block.bn3.weight.zero_()
    return MaskRCNN(
        fpn, num_classes=4, min_size=size, max_size=size,
        rpn_anchor_generator=AnchorGenerator(tuple((s,) for s in scales), ((0.5, 1.0, 2.0),) * 5),
        rpn_pre_nms_top_n_train=top_n, rpn_pre_nms_top_n_test=top_n,
        rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=1000, rpn_batch_size_per_image=256,
        box_roi_pool=MultiScaleRoIAlign(levels, 7, sampling_ratio=1),
        mask_roi_pool=MultiScaleRoIAlign(levels, 14, sampling_ratio=1),
        box_score_thresh=0.0, box_nms_thresh=0.3, box_detections_per_img=100,
        box_batch_size_per_image=32 if small else 200, box_positive_fraction=0.33)


def run_detect(backbone, size, batch, repeat):
    import numpy as np
    import torch

    t0 = time.perf_counter()
    model = make_model(backbone, size).eval()
    build_s = time.perf_counter() - t0
    images = np.random.default_rng(0).integers(0, 255, (batch, size, size, 3), dtype=np.uint8)

    def detect():
        with torch.inference_mode():
            return model([torch.from_numpy(image).permute(2, 0, 1).float().div_(255) for image in images])

    t0 = time.perf_counter()
    detect()
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outputs = detect()
        times.append(time.perf_counter() - t0)
    return {"build_s": round(build_s, 3), "first_call_s": round(first_s, 3),
            "steady_min_s": round(min(times), 3), "steady_median_s": round(statistics.median(times), 3),
            "images": batch, "proposals": 1000, "pre_nms_top_n_per_level": per_level_top_n(size),
            "detections": min(len(o["boxes"]) for o in outputs)}


def shapes_sample(rng, size):
    """An image [3, size, size] in [0, 1] and its target: 1 to 4 squares, discs and triangles
    (classes 1..3) on a plain background, centres 20 px from the border, half-side or radius
    20 px to size / 4 (ShapesDataset's), drawn in order without occlusion handling."""
    import numpy as np
    import torch

    yy, xx = np.mgrid[:size, :size]
    image = np.empty((size, size, 3), np.uint8)
    image[:] = rng.integers(0, 256, 3)
    masks, labels = [], []
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(1, 4))
        y, x = rng.integers(20, size - 20, 2)
        s = int(rng.integers(20, size // 4 + 1))
        if label == 1:
            mask = (abs(yy - y) <= s) & (abs(xx - x) <= s)
        elif label == 2:
            mask = (yy - y) ** 2 + (xx - x) ** 2 < s ** 2
        else:  # apex (x, y - s), base on y + s
            mask = (yy <= y + s) & (abs(xx - x) * 3 ** 0.5 <= yy - (y - s))
        image[mask] = rng.integers(0, 256, 3)
        masks.append(mask)
        labels.append(label)
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
              "masks": torch.from_numpy(np.stack(masks).astype(np.uint8))}
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255), target


def run_train(size, batch, repeat):
    import numpy as np
    import torch

    model = make_model("resnet50", size).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.001, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    prep, batches = [], []
    for _ in range(repeat + 1):
        t0 = time.perf_counter()
        batches.append(list(zip(*(shapes_sample(rng, size) for _ in range(batch)))))
        prep.append(time.perf_counter() - t0)

    def step(images, targets):
        loss = sum(model(list(images), list(targets)).values())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()

    t0 = time.perf_counter()
    step(*batches[0])
    first_s = time.perf_counter() - t0
    times = []
    for b in batches[1:]:
        t0 = time.perf_counter()
        step(*b)
        times.append(time.perf_counter() - t0)
    return {"first_step_s": round(first_s, 3), "step_min_s": round(min(times), 3),
            "step_median_s": round(statistics.median(times), 3),
            "data_prep_per_batch_median_s": round(statistics.median(prep), 3),
            "batch": batch, "image": size, "rois_per_image": 32 if size <= 128 else 200,
            "pre_nms_top_n_per_level": per_level_top_n(size)}


def run_case(case, repeat, threads):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    kind, backbone, batch, size = parse_case(case)
    if kind == "detect":
        result = run_detect(backbone, size, batch, repeat)
    else:
        result = run_train(size, batch, repeat)
    return {"case": case, **result, "peak_rss_mb": round(peak_rss_mb()), "torch": torch.__version__,
            "torchvision": torchvision.__version__, **environment(threads)}


def run_side(command, case, args):
    """One case in a fresh process: its JSON line as a dict, or {"error": the stderr's end}."""
    proc = subprocess.run(command + ["--case", case, "--repeat", str(args.repeat),
                                     "--threads", str(args.threads)], capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {"case": case, "error": proc.stderr.strip()[-800:]}


def compare(args):
    sides = {"ours": [sys.executable, os.path.join(HERE, "bench_model.py")],
             "peer": [args.peer_python, os.path.abspath(__file__)]}
    for case in args.cases:
        results = {side: [] for side in sides}
        for round_ in range(args.rounds):
            for side, command in sides.items():
                result = run_side(command, case, args)
                print(json.dumps({"side": side, "round": round_, **result}), flush=True)
                if "error" not in result:
                    results[side].append(result)
        if not all(results.values()):
            continue
        for figure in FIGURES[parse_case(case)[0]]:
            ours, peer = (statistics.median(r[figure] for r in results[side]) for side in sides)
            print(json.dumps({"case": case, "figure": figure, "ours": ours, "peer": peer,
                              "ratio": round(ours / peer, 3) if peer else None}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=["compare"],
                        help="compare: run ours and the peer interleaved (else --case runs one peer case)")
    parser.add_argument("--case", choices=CASES, help="run one case on the peer")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="compare: the cases")
    parser.add_argument("--peer-python", help="compare: the python of the peer venv")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="compare: runs of each case per side")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="intra-op and inter-op threads of both sides (default: the CPU count)")
    args = parser.parse_args()
    if args.mode == "compare":
        if not args.peer_python:
            parser.error("compare needs --peer-python")
        compare(args)
    elif args.case:
        print(json.dumps(run_case(args.case, args.repeat, args.threads)), flush=True)
    else:
        parser.error("give --case CASE, or compare --peer-python PYTHON")


if __name__ == "__main__":
    main()

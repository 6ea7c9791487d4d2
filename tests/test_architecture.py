"""The package's shape (docs/architecture.md): every module declares its public names, no
module imports another's private ones, and the façades keep matterport's names."""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import mrcnn

PACKAGE = Path(mrcnn.__file__).parent
MODULES = sorted(m.name for m in pkgutil.walk_packages(mrcnn.__path__, "mrcnn.")
                 if not m.name.endswith("__main__"))

# design.md §2: what users import from the façades.
UTILS_NAMES = """Dataset extract_bboxes compute_iou compute_overlaps compute_overlaps_masks
non_max_suppression apply_box_deltas box_refinement resize_image resize_mask minimize_mask
expand_mask unmold_mask generate_anchors generate_pyramid_anchors trim_zeros compute_matches
compute_ap compute_ap_range compute_recall norm_boxes denorm_boxes batch_slice
download_trained_weights resize""".split()
MODEL_NAMES = """MaskRCNN log load_image_gt compute_anchors build_rpn_targets generate_random_rois data_generator
mold_image unmold_image compose_image_meta parse_image_meta parse_image_meta_graph
compute_backbone_shapes resnet_graph build_rpn_model fpn_classifier_graph build_fpn_mask_graph
rpn_class_loss_graph rpn_bbox_loss_graph mrcnn_class_loss_graph mrcnn_bbox_loss_graph
mrcnn_mask_loss_graph ProposalLayer DetectionTargetLayer PyramidROIAlign DetectionLayer
BatchNorm""".split()


def test_the_package_has_its_modules():
    assert {"mrcnn.model", "mrcnn.utils", "mrcnn.geometry", "mrcnn.image_meta",
            "mrcnn.pipeline", "mrcnn.formats.coco"} <= set(MODULES)


@pytest.mark.parametrize("name", [m for m in MODULES if m != "mrcnn"])
def test_every_module_declares_public_names_that_exist(name):
    module = importlib.import_module(name)
    public = module.__all__
    assert public and len(set(public)) == len(public)
    missing = [n for n in public if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names {missing}, which it does not define"
    assert not [n for n in public if n.startswith("_")]


def _private_imports(path):
    """(line, module, name) for each `from mrcnn.x import _name` in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mrcnn")
            for alias in node.names if alias.name.startswith("_")]


def test_no_module_imports_another_modules_private_names():
    found = {str(p.relative_to(PACKAGE)): _private_imports(p) for p in PACKAGE.rglob("*.py")}
    assert not {k: v for k, v in found.items() if v}


def test_the_private_import_check_can_fail(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from mrcnn.weights import _pair, load_weights_by_name\n")
    assert _private_imports(source) == [(1, "mrcnn.weights", "_pair")]


@pytest.mark.parametrize("module, names", [("mrcnn.utils", UTILS_NAMES), ("mrcnn.model", MODEL_NAMES)])
def test_facades_keep_matterports_names(module, names):
    module = importlib.import_module(module)
    assert set(names) <= set(module.__all__)
    assert all(callable(getattr(module, n)) for n in names)

"""The notebooks in notebooks/ run top to bottom, headless, and draw their figures.

Each notebook is executed with nbclient in smoke mode (MRCNN_NOTEBOOK_SMOKE=1:
few images, a few training steps) from a temporary folder, with checkpoints in a
temporary MRCNN_MODEL_DIR shared by the notebooks of one test session: demo
finds none and trains its own small model, train_shapes trains one, and the
inspect_* notebooks load the newest. Any cell error fails the test, and every
notebook must produce PNG figures. A cheap check also makes sure the committed
notebooks carry the outputs of a full (not smoke) run.
"""

import json
import os
import shutil
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
# Every notebook in notebooks/ is tested, in this order where listed (for speed only:
# train_shapes leaves a checkpoint for the inspect_* notebooks); one missing from MIN_FIGURES fails.
ORDER = ["inspect_data", "demo", "train_shapes", "inspect_model", "inspect_weights"]
NOTEBOOKS = sorted((f[:-len(".ipynb")] for f in os.listdir(NOTEBOOK_DIR) if f.endswith(".ipynb")),
                   key=lambda name: (ORDER.index(name) if name in ORDER else len(ORDER), name))
# Figures each notebook draws at least, in smoke mode.
MIN_FIGURES = {"inspect_data": 10, "demo": 3, "train_shapes": 5, "inspect_model": 10, "inspect_weights": 3}
CELL_TIMEOUT_S = 300
KERNEL_NAME = "mrcnn-notebook-test"


def figures(nb):
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
            if o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_full_run_outputs(name):
    """What a reader sees on GitHub: outputs of a full run, figures included, no errors."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name + ".ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell was executed"
    first_output = "".join(o.get("text", "") for o in code[0].outputs)
    assert "smoke mode: False" in first_output, "committed outputs must come from a full run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert len(figures(nb)) >= MIN_FIGURES[name]


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory):
    """Environment for the kernels: smoke mode, a shared temporary MODEL_DIR, and a
    kernelspec that runs this interpreter (whatever other kernels the machine has)."""
    base = tmp_path_factory.mktemp("notebooks")
    kernel_dir = base / "jupyter" / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (mrcnn tests)", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MRCNN_NOTEBOOK_SMOKE", "1")
        mp.setenv("MRCNN_MODEL_DIR", str(base / "logs"))
        mp.setenv("MRCNN_ROOT_DIR", ROOT)
        mp.setenv("JUPYTER_PATH", str(base / "jupyter"))
        mp.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
        yield base


@pytest.mark.large
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, notebook_env, tmp_path):
    # Run a copy from a temporary folder, so nothing is written next to the notebooks.
    path = tmp_path / (name + ".ipynb")
    shutil.copy(os.path.join(NOTEBOOK_DIR, name + ".ipynb"), path)
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.time()
    try:
        client.execute()
    except CellExecutionError as e:
        nbformat.write(nb, path)
        pytest.fail(f"{name}.ipynb failed in smoke mode (executed copy: {path}):\n{e}")
    finally:
        print(f"{name}.ipynb: {time.time() - start:.1f} s")
    nbformat.write(nb, path)

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("smoke mode: True" in o.get("text", "") for o in outputs), "the notebook saw MRCNN_NOTEBOOK_SMOKE"
    assert len(figures(nb)) >= MIN_FIGURES[name], f"{name}.ipynb drew {len(figures(nb))} figures"

"""What `train(..., resume=True)` needs besides the weights: the optimizer's state, the epoch,
the training stage and the data seed, in a small HDF5 file beside each checkpoint.

The checkpoint `mask_rcnn_<name>_0007.h5` stays exactly matterport's weights file;
its state is `mask_rcnn_<name>_0007.state.h5`. Each is written atomically, the
state first, so the newest complete weights file always has its own state
beside it (a crash between the two leaves an orphan state that the next epoch
overwrites). A stage is one `train()` call: its target epoch count, layer regex
and learning rate. The optimizer state is restored only into the same stage,
as an uninterrupted run starts each stage with a fresh optimizer.
"""

import os

import h5py
import keras
import numpy as np

from mrcnn import files

__all__ = ["state_path", "save_state", "load_state", "restore_optimizer"]


def state_path(checkpoint_path):
    """The state file of a checkpoint: `.h5` replaced by `.state.h5`."""
    root, _ = os.path.splitext(os.fspath(checkpoint_path))
    return root + ".state.h5"


def save_state(path, optimizer, epoch, stage, data_seed):
    """Write `optimizer`'s variables (in order), the completed `epoch`, `stage` and `data_seed`."""
    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["epoch"] = int(epoch)
            f.attrs["data_seed"] = int(data_seed)
            for key, value in stage.items():
                f.attrs[f"stage_{key}"] = value
            group = f.create_group("optimizer")
            for i, variable in enumerate(optimizer.variables):
                data = group.create_dataset(f"{i:05d}", data=keras.ops.convert_to_numpy(variable))
                data.attrs["name"] = variable.name

    files.write_atomically(path, write)


def load_state(path):
    """The state at `path` as {"epoch", "data_seed", "stage", "optimizer": [(name, array)]},
    or None when there is no such file or it does not read as one."""
    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            group = f["optimizer"]
            return {"epoch": int(f.attrs["epoch"]), "data_seed": int(f.attrs["data_seed"]),
                    "stage": {key[len("stage_"):]: _plain(value) for key, value in f.attrs.items()
                              if key.startswith("stage_")},
                    "optimizer": [(group[key].attrs["name"], group[key][()])
                                  for key in sorted(group)]}
    except (OSError, KeyError):
        return None


def _plain(value):
    """An HDF5 attribute as the Python value it was written from."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def restore_optimizer(optimizer, trainable_variables, saved):
    """Build `optimizer` for `trainable_variables` and assign the saved variables (but the
    learning rate, which the train() call gives). Raises ValueError when they do not match."""
    if not optimizer.built:
        optimizer.build(trainable_variables)
    variables = optimizer.variables
    shapes = [tuple(v.shape) for v in variables]
    if [name for name, _ in saved] != [v.name for v in variables] or \
            shapes != [tuple(np.shape(value)) for _, value in saved]:
        raise ValueError(
            f"The saved optimizer state has {len(saved)} variables that do not match this "
            f"optimizer's {len(variables)} (another model, optimizer or set of trainable "
            "layers). Resume with the config and train() call that wrote it.")
    for variable, (name, value) in zip(variables, saved):
        if name != "learning_rate":
            variable.assign(value)

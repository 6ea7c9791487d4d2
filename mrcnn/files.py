"""Files written atomically (a temp file renamed into place): checkpoints, downloaded weight
files, and their permissions."""

import os
import tempfile
import urllib.error
import urllib.request

__all__ = [
    "COCO_MODEL_URL", "apply_umask", "write_atomically", "download_file", "download_trained_weights",
]


# Matterport's released COCO weights.
COCO_MODEL_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.0/mask_rcnn_coco.h5"


def apply_umask(path):
    """Give a file or folder made by `tempfile` (private: 0600 / 0700) the permissions
    the umask gives any new one, before it is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def write_atomically(path, write):
    """Call write(temp_path) for a temp file beside `path`, sync it, then rename it to `path`.

    A crash or an error leaves `path` as it was (and no temp file after an error).
    """
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def download_file(url, path, verbose=1, what="file"):
    """Download `url` to `path` atomically (temp file in the same folder, then rename).

    Shows a progress bar when verbose. On any network failure raises
    RuntimeError saying where to download the file by hand and where to put
    it; nothing is left at `path` unless the download completed.
    """
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    if verbose:
        print(f"Downloading {what} to {path} ...")
    fd, tmp_path = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            _copy_with_progress(resp, out, total, verbose)
            if total is not None and out.tell() != total:
                raise OSError(f"connection closed after {out.tell()} of {total} bytes")
        apply_umask(tmp_path)
        os.replace(tmp_path, path)
    except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed URL
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        reason = getattr(e, "reason", e)
        raise RuntimeError(
            f"Could not download {what} from {url}: {reason}. If this machine is offline, "
            f"download it elsewhere and copy it to {path}.") from e
    if verbose:
        print(f"... done downloading {what}.")
    return path


def _copy_with_progress(src, dst, total, verbose):
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, disable=not verbose) as bar:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            dst.write(chunk)
            bar.update(len(chunk))


def download_trained_weights(coco_model_path, verbose=1, url=COCO_MODEL_URL):
    """Download matterport's COCO-trained weights (mask_rcnn_coco.h5, 246 MB) to `coco_model_path`."""
    return download_file(url, coco_model_path, verbose=verbose, what="pretrained COCO weights")

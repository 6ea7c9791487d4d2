"""Downloads run against a local HTTP server on 127.0.0.1, never the internet."""

import http.server
import os
import socket

import pytest

from mrcnn import utils
from tests.conftest import local_server

PAYLOAD = os.urandom(3 * (1 << 20) + 123)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/weights.h5":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path == "/truncated.h5":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:1000])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    with local_server(handler=Handler) as url:
        yield url


def test_download_writes_the_whole_file_with_progress(server, tmp_path, capsys):
    target = tmp_path / "sub" / "mask_rcnn_coco.h5"
    assert utils.download_trained_weights(str(target), verbose=1, url=server + "/weights.h5") == str(target)
    assert target.read_bytes() == PAYLOAD
    assert os.listdir(target.parent) == ["mask_rcnn_coco.h5"]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask   # not tempfile's private 0600
    captured = capsys.readouterr()
    assert "Downloading pretrained COCO weights" in captured.out and "done" in captured.out
    assert "3.15M" in captured.err  # tqdm's byte counter


@pytest.mark.parametrize("path", ["/missing.h5", "/truncated.h5"])
def test_failed_download_leaves_nothing_and_says_what_to_do(server, tmp_path, path):
    target = tmp_path / "mask_rcnn_coco.h5"
    with pytest.raises(RuntimeError, match="download it elsewhere and copy it to .*mask_rcnn_coco.h5"):
        utils.download_trained_weights(str(target), verbose=0, url=server + path)
    assert os.listdir(tmp_path) == []


def test_offline_download_is_a_clear_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RuntimeError, match="Could not download .*127.0.0.1"):
        utils.download_trained_weights(str(tmp_path / "w.h5"), verbose=0, url=f"http://127.0.0.1:{port}/w.h5")
    assert os.listdir(tmp_path) == []

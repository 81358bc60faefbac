# Copyright (c) pipofan-monai contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""``download`` / ``verify`` against a local HTTP server on 127.0.0.1 (never the internet) serving small fake
archives and per-case files built here: success, resume after a cut (Range request asserted), checksum mismatch,
disk full, login datasets, verify on good and bad folders and archives."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipofan_monai.apps.dataset_conversion import download as dl
from pipofan_monai.apps.dataset_conversion import fetch, sources

REPO = Path(__file__).resolve().parents[3]
MSD = {"msd_spleen": ("Task09_Spleen", "spleen"), "msd_pancreas": ("Task07_Pancreas", "pancreas"),
       "msd_liver": ("Task03_Liver", "liver")}


# ------------------------------------------------------------------------------------------------ local server


class _Server:
    """Files by URL path; records ``(path, Range header, body bytes sent)``; ``cut[path] = n`` makes the next GET of
    ``path`` send n body bytes and drop the connection; ``ignore_range`` answers 200 with the whole file."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None, int]] = []
        self.cut: dict[str, int] = {}
        self.ignore_range = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                path, rng = self.path, self.headers.get("Range")
                data = server.files.get(path)
                if data is None:
                    server.requests.append((path, rng, 0))
                    self.send_error(404)
                    return
                start = 0
                m = re.match(r"^bytes=(\d+)-$", rng or "")
                if m and not server.ignore_range:
                    start = int(m.group(1))
                    if start >= len(data):
                        server.requests.append((path, rng, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = server.cut.pop(path, None)
                if n is not None:
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    server.requests.append((path, rng, n))
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)
                server.requests.append((path, rng, len(body)))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


# ------------------------------------------------------------------------------------------------ fake data


def _nii_bytes(shape=(8, 8, 4), value=0, gz=True) -> bytes:
    img = nib.Nifti1Image(np.full(shape, value, np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def _msd_tree(task: str, prefix: str, train, test) -> dict[str, bytes]:
    files = {f"{task}/imagesTr/{prefix}_{i}.nii.gz": _nii_bytes(value=i) for i in train}
    files.update({f"{task}/labelsTr/{prefix}_{i}.nii.gz": _nii_bytes(value=1) for i in train})
    files.update({f"{task}/imagesTs/{prefix}_{i}.nii.gz": _nii_bytes(value=i) for i in test})
    meta = {"name": task, "numTraining": len(train), "numTest": len(test),
            "training": [{"image": f"./imagesTr/{prefix}_{i}.nii.gz", "label": f"./labelsTr/{prefix}_{i}.nii.gz"}
                         for i in train],
            "test": [f"./imagesTs/{prefix}_{i}.nii.gz" for i in test]}
    files[f"{task}/dataset.json"] = json.dumps(meta, indent=1).encode()
    return files


def _tar(files: dict[str, bytes], extra_appledouble: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            if extra_appledouble and name.endswith(".nii.gz"):  # macOS junk shipped in the MSD tars
                junk = tarfile.TarInfo(str(Path(name).parent / ("._" + Path(name).name)))
                junk.size = 4
                tf.addfile(junk, io.BytesIO(b"junk"))
    return buf.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _run_cli(cmd: str) -> None:
    """Run a printed ``python -m pipofan_monai ...`` line through the real CLI entry, in-process."""
    from pipofan_monai.__main__ import main

    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "pipofan_monai"], cmd
    old = sys.argv
    sys.argv = ["pipofan_monai"] + argv[3:]
    try:
        main()
    finally:
        sys.argv = old


def _has_scanner(dataset: str) -> bool:
    from pipofan_monai.apps.dataset_conversion.datalist import SOURCE_DATASETS

    return dataset in SOURCE_DATASETS


# ------------------------------------------------------------------------------------------------ MSD download


@pytest.mark.parametrize("dataset", list(MSD))
def test_msd_download_unpack_and_datalist(server, tmp_path, capsys, dataset):
    task, prefix = MSD[dataset]
    files = _msd_tree(task, prefix, train=[1, 2, 5], test=[3])
    tar = _tar(files)
    server.files[f"/{task}.tar"] = tar
    root = tmp_path / "data"
    dl.download_command(dataset, root=str(root), base_url=server.url, md5=_md5(tar), progress=False)
    out = capsys.readouterr().out
    folder, dlist = root / task, root / "datalist.json"
    cmd = f"python -m pipofan_monai datalist --{dataset} {folder} --output {dlist}"
    assert cmd in out
    # one plain GET, the archive kept, the exact tree (no AppleDouble, no temp, no .part), same bytes
    assert server.requests == [(f"/{task}.tar", None, len(tar))]
    assert (root / f"{task}.tar").read_bytes() == tar
    dirs = {Path(r).parent.as_posix() for r in files}
    assert _listing(root) == sorted({f"{task}.tar"} | dirs | set(files))
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data
    assert dl.verify_dataset(dataset, folder, progress=False).problems == [
        f"{folder}: 3 labeled cases in imagesTr/labelsTr, the release has {dl.DATASET_SOURCES[dataset].num_train}",
        f"{folder}: 1 test images in imagesTs, the release has {dl.DATASET_SOURCES[dataset].num_test}",
    ]
    if not _has_scanner(dataset):
        pytest.skip(f"no datalist scanner for {dataset} on this branch yet (being added with the vocabulary)")
    _run_cli(cmd)
    data = json.loads(dlist.read_text())
    assert [(t["dataset"], t["case_id"]) for t in data["training"]] == [(dataset, f"{prefix}_{i}") for i in (1, 2, 5)]
    assert [t["image"] for t in data["test"]] == [f"{task}/imagesTs/{prefix}_3.nii.gz"]


def test_msd_rerun_is_a_noop_and_remove_archive(server, tmp_path, capsys):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), keep_archive=False,
                        progress=False)
    assert not (tmp_path / "Task09_Spleen.tar").exists() and (tmp_path / "Task09_Spleen/dataset.json").is_file()
    out = dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), progress=False)
    assert out["folder"] == str(tmp_path / "Task09_Spleen")
    assert len(server.requests) == 1  # nothing fetched the second time


def test_cli_flags_as_documented(server, tmp_path, monkeypatch, capsys):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    monkeypatch.chdir(tmp_path)
    _run_cli(f"python -m pipofan_monai download --dataset msd_spleen --root data --keep_archive False "
             f"--base_url {server.url} --md5 {_md5(tar)} --progress false")
    assert _listing(tmp_path / "data")[:2] == ["Task09_Spleen", "Task09_Spleen/dataset.json"]
    assert not (tmp_path / "data/Task09_Spleen.tar").exists()
    _kits_server(server, [0, 1, 2])
    _run_cli(f"python -m pipofan_monai download --dataset kits19 --root data --cases 0-2 --base_url {server.url}/img "
             f"--labels_base_url {server.url}/repo")
    assert sorted(p.name for p in (tmp_path / "data/KiTS19").iterdir()) == ["case_00000", "case_00001", "case_00002"]
    assert "python -m pipofan_monai datalist --msd_spleen data/Task09_Spleen --kits19 data/KiTS19 --output " \
           "data/datalist.json" in capsys.readouterr().out


def test_base_url_from_environment(server, tmp_path, monkeypatch):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/mirror/Task09_Spleen.tar"] = tar
    monkeypatch.setenv(dl.ENV_BASE_URL, server.url + "/mirror/")
    dl.download_dataset("msd_spleen", tmp_path, md5=_md5(tar), progress=False)
    assert server.requests == [("/mirror/Task09_Spleen.tar", None, len(tar))]


def test_published_msd_resources_are_monais():
    from monai.apps import DecathlonDataset

    for name, (task, _) in MSD.items():
        assert dl._msd_resource(task) == (DecathlonDataset.resource[task], DecathlonDataset.md5[task])
    assert dl._msd_resource("Task09_Spleen")[1] == "410d4a301da4e5b2f6f86ec3ddba524e"
    assert dl._rebase(DecathlonDataset.resource["Task03_Liver"], "http://127.0.0.1:1/x/") == \
        "http://127.0.0.1:1/x/Task03_Liver.tar"


# ------------------------------------------------------------------------------------------------ resume


def test_resume_after_cut_on_next_run(server, tmp_path):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1, 2], [3]))
    cut_at = len(tar) // 3
    server.files["/Task09_Spleen.tar"] = tar
    server.cut["/Task09_Spleen.tar"] = cut_at
    with pytest.raises(dl.DownloadError, match=r"was cut after .*Task09_Spleen\.tar\.part is kept.*resume"):
        dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), retries=0, progress=False)
    part = tmp_path / "Task09_Spleen.tar.part"
    assert part.read_bytes() == tar[:cut_at]
    assert _listing(tmp_path) == ["Task09_Spleen.tar.part"]  # nothing under a final name
    dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), retries=0, progress=False)
    # the second request asked for the rest only, and only the rest was sent
    assert server.requests == [("/Task09_Spleen.tar", None, cut_at),
                               ("/Task09_Spleen.tar", f"bytes={cut_at}-", len(tar) - cut_at)]
    assert (tmp_path / "Task09_Spleen.tar").read_bytes() == tar and not part.exists()
    assert (tmp_path / "Task09_Spleen/imagesTr/spleen_2.nii.gz").is_file()


def test_resume_within_one_run_and_server_ignoring_range(server, tmp_path):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    server.cut["/Task09_Spleen.tar"] = 1000
    dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), retries=1, retry_wait=0,
                        progress=False)
    assert [r[1] for r in server.requests] == [None, "bytes=1000-"]
    assert (tmp_path / "Task09_Spleen.tar").read_bytes() == tar
    # a server that ignores Range: the whole file is fetched again and the result is still exact
    (tmp_path / "b").mkdir()
    (tmp_path / "b/Task09_Spleen.tar.part").write_bytes(tar[:500])
    server.ignore_range = True
    dl.download_dataset("msd_spleen", tmp_path / "b", base_url=server.url, md5=_md5(tar), progress=False)
    assert server.requests[-1] == ("/Task09_Spleen.tar", "bytes=500-", len(tar))
    assert (tmp_path / "b/Task09_Spleen.tar").read_bytes() == tar


def test_complete_part_file_gets_416_and_is_finished(server, tmp_path):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    (tmp_path / "Task09_Spleen.tar.part").write_bytes(tar)  # run killed between the last byte and the rename
    dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), progress=False)
    assert server.requests == [("/Task09_Spleen.tar", f"bytes={len(tar)}-", 0)]
    assert (tmp_path / "Task09_Spleen.tar").read_bytes() == tar


# ------------------------------------------------------------------------------------------------ checksum


def test_checksum_mismatch_keeps_file_aside_and_touches_nothing_else(server, tmp_path, capsys):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    _write_tree(tmp_path, {"mine.txt": b"user file", "Task07_Pancreas/dataset.json": b"{}"})
    wrong = "0" * 32
    with pytest.raises(SystemExit) as e:
        dl.download_command("msd_spleen", root=str(tmp_path), base_url=server.url, md5=wrong, progress=False)
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"MD5 mismatch for {server.url}/Task09_Spleen.tar: expected {wrong}, got {_md5(tar)}" in err
    assert f"kept as {tmp_path / 'Task09_Spleen.tar.bad'}" in err and "nothing else was changed" in err
    assert _listing(tmp_path) == ["Task07_Pancreas", "Task07_Pancreas/dataset.json", "Task09_Spleen.tar.bad",
                                  "mine.txt"]
    assert (tmp_path / "Task09_Spleen.tar.bad").read_bytes() == tar
    assert (tmp_path / "mine.txt").read_bytes() == b"user file"


def test_given_archive_with_wrong_md5_is_left_alone(tmp_path):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    src = tmp_path / "Downloads" / "Task09_Spleen.tar"
    src.parent.mkdir()
    src.write_bytes(tar)
    with pytest.raises(dl.ChecksumError, match=r"differs from the published 410d4a301da4e5b2f6f86ec3ddba524e"):
        dl.download_dataset("msd_spleen", tmp_path / "data", archive=str(src), progress=False)
    assert src.read_bytes() == tar and not (tmp_path / "data" / "Task09_Spleen").exists()
    dl.download_dataset("msd_spleen", tmp_path / "data", archive=str(src), md5=_md5(tar), progress=False)
    assert (tmp_path / "data/Task09_Spleen/labelsTr/spleen_1.nii.gz").is_file() and src.is_file()


# ------------------------------------------------------------------------------------------------ disk full


def _enospc_after(monkeypatch, n_ok: int):
    calls = {"n": 0}
    real = fetch._write

    def write(f, data):
        calls["n"] += 1
        if calls["n"] > n_ok:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, data)

    monkeypatch.setattr(fetch, "_write", write)


def test_disk_full_while_downloading(server, tmp_path, monkeypatch):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1, 2], [3]))
    server.files["/Task09_Spleen.tar"] = tar
    monkeypatch.setattr(fetch, "CHUNK", 1024)
    _enospc_after(monkeypatch, 2)
    with pytest.raises(dl.DiskFullError) as e:
        dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), retries=0, progress=False)
    msg = str(e.value)
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert msg.startswith(f"no space left in {tmp_path} while downloading Task09_Spleen.tar: about ")
    assert f"{(len(tar) - 2048) / 1024:.1f} KiB more is needed" in msg
    assert (tmp_path / "Task09_Spleen.tar.part").read_bytes() == tar[:2048]
    assert _listing(tmp_path) == ["Task09_Spleen.tar.part"]
    monkeypatch.undo()
    dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), progress=False)
    assert server.requests[-1] == ("/Task09_Spleen.tar", "bytes=2048-", len(tar) - 2048)
    assert (tmp_path / "Task09_Spleen.tar").read_bytes() == tar


def test_disk_full_while_unpacking_leaves_no_half_folder(tmp_path, monkeypatch):
    files = _msd_tree("Task09_Spleen", "spleen", [1, 2, 3], [4])
    tar = _tar(files)
    src = tmp_path / "Task09_Spleen.tar"
    src.write_bytes(tar)
    _enospc_after(monkeypatch, 3)
    with pytest.raises(dl.DiskFullError, match=rf"no space left in {re.escape(str(tmp_path))} while unpacking "
                                               r"Task09_Spleen\.tar: about .* more is needed"):
        dl.download_dataset("msd_spleen", tmp_path, md5=_md5(tar), progress=False)
    assert _listing(tmp_path) == ["Task09_Spleen.tar"] and src.read_bytes() == tar


def test_not_enough_free_space_is_refused_before_writing(server, tmp_path, monkeypatch):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1], [2]))
    server.files["/Task09_Spleen.tar"] = tar
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda p: type("U", (), {"free": 100})())
    with pytest.raises(dl.DiskFullError, match=rf"not enough space in {re.escape(str(tmp_path))} for downloading "
                                               rf"Task09_Spleen\.tar and unpacking it: {2 * len(tar) / 1024:.1f} KiB "
                                               r"needed, 100 B free"):
        dl.download_dataset("msd_spleen", tmp_path, base_url=server.url, md5=_md5(tar), progress=False)
    assert not (tmp_path / "Task09_Spleen.tar").exists()


def test_unreachable_server_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(dl.DownloadError, match=rf"cannot reach http://127.0.0.1:{port}/Task09_Spleen.tar \(.*refused"):
        dl.download_dataset("msd_spleen", tmp_path, base_url=f"http://127.0.0.1:{port}", retries=0, progress=False)
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------------------------------------ KiTS19


def _kits_server(server, cases, bad_label=None):
    for c in cases:
        server.files[f"/img/images/case_{c:05d}.nii.gz"] = _nii_bytes(value=c)
        if c < 210:
            data = _nii_bytes(value=1)
            server.files[f"/repo/data/case_{c:05d}/segmentation.nii.gz"] = data[:-9] if c == bad_label else data


def test_kits19_download_per_case_and_datalist(server, tmp_path, capsys):
    _kits_server(server, [0, 1, 210], bad_label=1)
    root = tmp_path / "data"
    kw = dict(base_url=server.url + "/img", labels_base_url=server.url + "/repo", cases="[0,1,210]", retries=0,
              progress=False)
    with pytest.raises(SystemExit):
        dl.download_command("kits19", root=str(root), **kw)
    err = capsys.readouterr().err
    bad = root / "KiTS19/case_00001/segmentation.nii.gz.bad"
    assert "KiTS19: 1 problem(s)" in err and "truncated or corrupt gzip stream" in err and str(bad) in err
    assert _listing(root / "KiTS19") == ["case_00000", "case_00000/imaging.nii.gz", "case_00000/segmentation.nii.gz",
                                         "case_00001", "case_00001/imaging.nii.gz",
                                         "case_00001/segmentation.nii.gz.bad", "case_00210",
                                         "case_00210/imaging.nii.gz"]
    # the server's file is fixed; the rerun fetches only the missing file
    server.files["/repo/data/case_00001/segmentation.nii.gz"] = _nii_bytes(value=1)
    bad.unlink()
    n = len(server.requests)
    dl.download_command("kits19", root=str(root), **kw)
    assert [r[0] for r in server.requests[n:]] == ["/repo/data/case_00001/segmentation.nii.gz"]
    out = capsys.readouterr().out
    folder, dlist = root / "KiTS19", root / "datalist.json"
    cmd = f"python -m pipofan_monai datalist --kits19 {folder} --output {dlist}"
    assert cmd in out
    for c in (0, 1, 210):
        assert (folder / f"case_{c:05d}/imaging.nii.gz").read_bytes() == _nii_bytes(value=c)
    _run_cli(cmd)
    data = json.loads(dlist.read_text())
    assert [t["case_id"] for t in data["training"]] == ["case_00000", "case_00001"]
    assert [t["case_id"] for t in data["test"]] == ["case_00210"]


def test_kits19_resume_and_case_selection(server, tmp_path):
    _kits_server(server, [7])
    size = len(server.files["/img/images/case_00007.nii.gz"])
    server.cut["/img/images/case_00007.nii.gz"] = size // 2
    dl.download_dataset("kits19", tmp_path, base_url=server.url + "/img", labels_base_url=server.url + "/repo",
                        cases="7-7", retry_wait=0, progress=False)
    assert [(p, r) for p, r, _ in server.requests] == [("/img/images/case_00007.nii.gz", None),
                                                       ("/img/images/case_00007.nii.gz", f"bytes={size // 2}-"),
                                                       ("/repo/data/case_00007/segmentation.nii.gz", None)]
    assert dl._cases(None) == list(range(210)) and dl._cases("all") == list(range(300))
    assert dl._cases("3-5") == [3, 4, 5] and dl._cases([1, 2]) == [1, 2] and dl._cases(4) == [4]
    with pytest.raises(ValueError, match="KiTS19 cases are 0-299"):
        dl.download_dataset("kits19", tmp_path, cases=[300], progress=False)


def test_kits19_imaging_not_matching_its_label_is_reported(server, tmp_path):
    _kits_server(server, [4])
    server.files["/img/images/case_00004.nii.gz"] = _nii_bytes(shape=(8, 8, 5))
    with pytest.raises(dl.DownloadError, match=r"(?s)KiTS19: 1 problem\(s\).*case_00004/imaging\.nii\.gz \(shape "
                                               r"\(8, 8, 5\)\) and .*segmentation\.nii\.gz \(shape \(8, 8, 4\)\) do not"):
        dl.download_dataset("kits19", tmp_path, base_url=server.url + "/img", labels_base_url=server.url + "/repo",
                            cases=[4], progress=False)


def test_kits19_http_error_names_the_url(server, tmp_path):
    with pytest.raises(dl.DownloadError, match=r"(?s)KiTS19: 1 problem\(s\).*case_00212\.nii\.gz: HTTP 404"):
        dl.download_dataset("kits19", tmp_path, base_url=server.url + "/img", labels_base_url=server.url + "/r",
                            cases=[212], progress=False)  # a test case: imaging only, one file
    assert _listing(tmp_path) == []  # no empty folders left behind


# ------------------------------------------------------------------------------------------------ login datasets


@pytest.mark.parametrize("dataset,expected", [
    ("btcv", ["https://www.synapse.org/#!Synapse:syn3193805/wiki/89480", "RawData.zip",
              "{f}/RawData/Training/img/img0001.nii.gz", "{f}/RawData/Training/label/label0001.nii.gz",
              "{f}/RawData/Testing/img/img0061.nii.gz", "python -m pipofan_monai verify --dataset btcv --path {f}",
              "python -m pipofan_monai datalist --btcv {f} --output {r}/datalist.json"]),
    ("lits", ["https://competitions.codalab.org/competitions/17094", "Training Batch 1", "Training Batch 2",
              "{f}/Training Batch 2/volume-28.nii", "python -m pipofan_monai verify --dataset lits --path {f}",
              "python -m pipofan_monai download --dataset msd_liver --root {r}",
              "python -m pipofan_monai datalist --lits {f} --output {r}/datalist.json"]),
])
def test_login_datasets_print_instructions_and_download_nothing(tmp_path, capsys, dataset, expected):
    root = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        dl.download_command(dataset, root=str(root))
    assert e.value.code == 2
    out = capsys.readouterr().out
    folder = root / dl.DATASET_SOURCES[dataset].folder
    for text in expected:
        assert text.format(f=folder, r=root) in out, text
    assert not root.exists()


# ------------------------------------------------------------------------------------------------ verify


def _msd_full(task="Task09_Spleen", prefix="spleen", ntr=41, nts=20) -> dict[str, bytes]:
    return _msd_tree(task, prefix, train=list(range(1, ntr + 1)), test=list(range(100, 100 + nts)))


def test_verify_msd_good_folder_and_archive(tmp_path, capsys):
    files = _msd_full()
    _write_tree(tmp_path, files)
    report = dl.verify_dataset("msd_spleen", tmp_path / "Task09_Spleen", progress=False)
    assert report.ok and report.num_files == 41 * 2 + 20 + 1, str(report)
    tar = _tar(files)
    (tmp_path / "Task09_Spleen.tar").write_bytes(tar)
    dl.verify_command("msd_spleen", str(tmp_path / "Task09_Spleen.tar"), md5=_md5(tar), progress=False)
    assert "Task09_Spleen.tar: OK (103 files checked)" in capsys.readouterr().out
    # without --md5 the published MD5 is used: this fake archive is not the release
    r = dl.verify_dataset("msd_spleen", tmp_path / "Task09_Spleen.tar", progress=False)
    assert r.problems == [f"{tmp_path / 'Task09_Spleen.tar'}: MD5 {_md5(tar)} differs from the published "
                          "410d4a301da4e5b2f6f86ec3ddba524e for Task09_Spleen.tar"]


def test_verify_msd_bad_folder_lists_every_problem_by_file(tmp_path, capsys):
    files = _msd_full()
    del files["Task09_Spleen/labelsTr/spleen_7.nii.gz"]
    files["Task09_Spleen/imagesTr/spleen_3.nii.gz"] = b"not a nifti at all" * 30
    files["Task09_Spleen/imagesTs/Spleen-extra.nii.gz"] = _nii_bytes()
    _write_tree(tmp_path, files)
    folder = tmp_path / "Task09_Spleen"
    with pytest.raises(SystemExit) as e:
        dl.verify_command("msd_spleen", str(folder), progress=False)
    assert e.value.code == 1
    out = capsys.readouterr().out
    for text in [
        f"problem: {folder}/imagesTs/Spleen-extra.nii.gz: unexpected file name (expected spleen_N.nii.gz)",
        f"problem: {folder}/imagesTr/spleen_7.nii.gz: image without label (labelsTr/spleen_7.nii.gz missing)",
        f"problem: {folder}: 40 labeled cases in imagesTr/labelsTr, the release has 41",
        f"problem: {folder}/dataset.json: lists './labelsTr/spleen_7.nii.gz', which is missing",
        f"problem: {folder}/dataset.json: numTraining is 41, found 40",
        f"problem: {folder}/imagesTr/spleen_3.nii.gz: unreadable NIfTI",
    ]:
        assert text in out, text
    assert f"{folder}: 6 problem(s)" in out


def _kits_full(root: Path, test=()):
    for c in list(dl.KITS19_LABELED) + list(test):
        d = root / f"case_{c:05d}"
        d.mkdir(parents=True)
        (d / "imaging.nii.gz").write_bytes(_nii_bytes(shape=(4, 4, 2)))
        if c < 210:
            (d / "segmentation.nii.gz").write_bytes(_nii_bytes(shape=(4, 4, 2)))


def test_verify_kits19_good_and_bad(tmp_path):
    good = tmp_path / "good"
    _kits_full(good)
    r = dl.verify_dataset("kits19", good, full=True, progress=False)
    assert r.ok, str(r)
    assert r.notes == ["no test cases (case_00210-case_00299, imaging only) present"]
    bad = tmp_path / "bad"
    _kits_full(bad, test=[210])
    (bad / "case_00005/imaging.nii.gz").unlink()
    lfs = "version https://git-lfs.github.com/spec/v1\noid sha256:540d\nsize 225959599\n"
    (bad / "case_00009/segmentation.nii.gz").write_text(lfs)
    (bad / "case_00011/imaging.nii.gz").write_bytes(_nii_bytes()[:-20])  # truncated download
    r = dl.verify_dataset("kits19", bad, full=True, progress=False)
    assert r.problems[:2] == [f"{bad}: case_00005/imaging.nii.gz missing",
                              f"{bad}/case_00009/segmentation.nii.gz: a Git LFS pointer (the file itself was not "
                              "fetched)"]
    assert any(p.startswith(f"{bad}/case_00011/imaging.nii.gz: is a truncated or corrupt gzip stream") for p in
               r.problems), r.problems
    assert any(p.startswith(f"{bad}/case_00009/segmentation.nii.gz: is a Git LFS pointer") for p in r.problems)
    assert len(r.problems) == 4, r.problems
    assert r.notes[0].startswith("1 of the 90 test cases present; missing case_00211")


def test_verify_btcv_zip_and_lits_folder(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in sources.BTCV_TRAIN_IDS:
            zf.writestr(f"RawData/Training/img/img{i:04d}.nii.gz", b"x")
            if i != 3:
                zf.writestr(f"RawData/Training/label/label{i:04d}.nii.gz", b"x")
        for i in sources.BTCV_TEST_IDS:
            zf.writestr(f"RawData/Testing/img/img{i:04d}.nii.gz", b"x")
    (tmp_path / "RawData.zip").write_bytes(buf.getvalue())
    r = dl.verify_dataset("btcv", tmp_path / "RawData.zip", progress=False)
    assert r.problems == [f"{tmp_path / 'RawData.zip'}: training label label0003.nii.gz missing"]
    assert r.notes == ["no checksum is published for BTCV abdomen archives; file names and counts only"]

    lits = tmp_path / "LiTS"
    for i in range(131):
        batch = "Training Batch 1" if i < 28 else "Training Batch 2"
        _write_tree(lits, {f"{batch}/volume-{i}.nii": _nii_bytes(shape=(4, 4, 2), gz=False),
                           f"{batch}/segmentation-{i}.nii": _nii_bytes(shape=(4, 4, 2), gz=False)})
    assert dl.verify_dataset("lits", lits, progress=False).ok
    _write_tree(lits, {"copy/volume-3.nii": _nii_bytes(shape=(4, 4, 2), gz=False)})
    (lits / "Training Batch 2/segmentation-100.nii").unlink()
    r = dl.verify_dataset("lits", lits, progress=False)
    assert r.problems == [f"{lits}: volume-3 appears 2 times: Training Batch 1/volume-3.nii, copy/volume-3.nii",
                          f"{lits}: segmentation-100.nii missing"]


# ------------------------------------------------------------------------------------------------ CLI


def test_help_prints_and_runs_nothing(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), PAGER="cat")
    for cmd, words in (("download", ["--base_url", "msd_spleen", "resume"]), ("verify", ["--path", "--full"])):
        p = subprocess.run([sys.executable, "-m", "pipofan_monai", cmd, "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        text = p.stdout + p.stderr  # fire writes help to stderr when not on a terminal
        assert f"usage: python -m pipofan_monai {cmd} " in text and "__main__.py" not in text
        for w in words:
            assert w in text, (cmd, w)
    assert list(tmp_path.iterdir()) == []  # no 'data' folder, nothing downloaded


README_COMMANDS = """\
python -m pipofan_monai download --dataset msd_spleen --root data
python -m pipofan_monai download --dataset kits19 --root data
python -m pipofan_monai download --dataset btcv --root data
python -m pipofan_monai verify --dataset btcv --path data/BTCV
python -m pipofan_monai datalist --msd_spleen data/Task09_Spleen --kits19 data/KiTS19 --btcv data/BTCV --output data/datalist.json
"""
"""The command lines of the README section "Getting the public datasets", run here exactly as written (against
the local server: the published MSD resource is swapped for the fake archive, KiTS19 hosts via the env vars)."""


def test_readme_commands_as_written(server, tmp_path, monkeypatch, capsys):
    tar = _tar(_msd_tree("Task09_Spleen", "spleen", [1, 2], [3]))
    server.files["/Task09_Spleen.tar"] = tar
    monkeypatch.setattr(dl, "_msd_resource", lambda task: (f"https://example.org/{task}.tar", _md5(tar)))
    monkeypatch.setenv(dl.ENV_BASE_URL, server.url + "/img")
    _kits_server(server, list(range(210)))
    monkeypatch.setenv(dl.ENV_LABELS_BASE_URL, server.url + "/repo")
    monkeypatch.chdir(tmp_path)
    lines = README_COMMANDS.splitlines()

    # MSD is fetched from the (env) base URL too: give it the archive there
    server.files["/img/Task09_Spleen.tar"] = tar
    _run_cli(lines[0])
    assert "python -m pipofan_monai datalist --msd_spleen data/Task09_Spleen --output data/datalist.json" in \
        capsys.readouterr().out
    _run_cli(lines[1])
    assert ("python -m pipofan_monai datalist --msd_spleen data/Task09_Spleen --kits19 data/KiTS19 "
            "--output data/datalist.json") in capsys.readouterr().out
    assert len(list((tmp_path / "data/KiTS19").glob("case_*/segmentation.nii.gz"))) == 210
    with pytest.raises(SystemExit) as e:
        _run_cli(lines[2])
    assert e.value.code == 2
    out = capsys.readouterr().out
    assert lines[3] in out and lines[4] in out  # the verify and datalist lines are the ones printed
    # the user unpacks RawData.zip into data/BTCV (30 labeled + 20 test CTs)
    raw = tmp_path / "data/BTCV/RawData"
    for i in sources.BTCV_TRAIN_IDS:
        _write_tree(raw, {f"Training/img/img{i:04d}.nii.gz": _nii_bytes(shape=(4, 4, 2)),
                          f"Training/label/label{i:04d}.nii.gz": _nii_bytes(shape=(4, 4, 2))})
    for i in sources.BTCV_TEST_IDS:
        _write_tree(raw, {f"Testing/img/img{i:04d}.nii.gz": _nii_bytes(shape=(4, 4, 2))})
    _run_cli(lines[3])
    assert "btcv: data/BTCV: OK (80 files checked)" in capsys.readouterr().out
    _run_cli(lines[4])
    data = json.loads((tmp_path / "data/datalist.json").read_text())
    assert {k: (v["num_cases"], v["num_test"]) for k, v in data["datasets"].items()} == {
        "msd_spleen": (2, 1), "kits19": (210, 0), "btcv": (30, 20)}

"""Bundles: deterministic archives, tamper detection, safe extraction (hand-made ONNX bundle, no torch)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.artifact import sha256_file
from pipeline.bundle import verify_bundle, write_json, write_tar
from pipeline.errors import BundleError
from targets.agent import write_golden


def _model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 4], [1.0, -2.0, 0.5, 3.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def make_bundle(root):
    root.mkdir(parents=True)
    _model(root / "model.onnx")
    xs = [{"x": np.arange(4, dtype=np.float32).reshape(1, 4) + i} for i in range(3)]
    ys = [{"y": x["x"] * np.array([1.0, -2.0, 0.5, 3.0], np.float32)} for x in xs]
    write_golden(root / "golden", xs, ys, 1e-5, 1e-5)
    (root / "README.md").write_text("hello\n")
    files = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size_bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file()}
    write_json(root / "manifest.json", {"schema_version": 1, "target": "t", "format": "onnx", "files": files,
                                        "model_files": ["model.onnx"]})
    return root


@pytest.fixture
def bundle(tmp_path):
    return make_bundle(tmp_path / "t")


def test_pristine_bundle_verifies_dir_and_tar(bundle, tmp_path):
    assert verify_bundle(bundle)["golden"]["passed"] == 3
    tar = tmp_path / "t.tar.gz"
    write_tar(bundle, tar, "t")
    for _ in range(3):
        assert verify_bundle(tar)["files_checked"] == len(json.loads((bundle / "manifest.json").read_text())["files"])


def test_tar_is_deterministic(bundle, tmp_path, monkeypatch):
    write_tar(bundle, tmp_path / "a.tar.gz", "t")
    copy = tmp_path / "copy" / "t"
    shutil.copytree(bundle, copy)
    for p in copy.rglob("*"):
        p.touch()
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    write_tar(copy, tmp_path / "b.tar.gz", "t")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        files = [m.name for m in tar.getmembers() if m.isfile()]
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    assert files == sorted(files) and "t/manifest.json" in files


@pytest.mark.parametrize("name", ["model.onnx", "golden/golden.json", "README.md"])
@pytest.mark.parametrize("damage", ["flip", "append", "truncate", "delete"])
def test_tamper_is_detected(bundle, name, damage):
    path = bundle / name
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "append":
        path.write_bytes(data + b"\0")
    elif damage == "truncate":
        path.write_bytes(data[:-1])
    else:
        path.unlink()
    with pytest.raises(BundleError):
        verify_bundle(bundle, run_golden=False)


def test_extra_file_and_symlink_are_refused(bundle):
    (bundle / "extra.txt").write_text("x")
    with pytest.raises(BundleError, match="not listed"):
        verify_bundle(bundle, run_golden=False)
    (bundle / "extra.txt").unlink()
    (bundle / "README.md").unlink()
    (bundle / "README.md").symlink_to("/etc/hostname")
    with pytest.raises(BundleError, match="not a regular file"):
        verify_bundle(bundle, run_golden=False)


def test_wrong_golden_output_fails(bundle):
    golden_out = next((bundle / "golden").rglob("output.*.npy"))
    np.save(golden_out, np.load(golden_out) + 1.0)
    manifest = json.loads((bundle / "manifest.json").read_text())
    rel = golden_out.relative_to(bundle).as_posix()
    manifest["files"][rel] = {"sha256": sha256_file(golden_out), "size_bytes": golden_out.stat().st_size}
    write_json(bundle / "manifest.json", manifest)
    with pytest.raises(BundleError, match="golden vectors failed"):
        verify_bundle(bundle)


def _evil_tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "hardlink", "unlisted", "no_manifest"])
def test_malicious_archives_are_refused(tmp_path, kind):
    manifest = json.dumps({"schema_version": 1, "target": "t", "files": {"a.txt": {}}}).encode()
    members = [_file("t/manifest.json", manifest)]
    if kind == "traversal":
        members.append(_file("t/../../evil.txt"))
    elif kind == "absolute":
        members.append(_file("/tmp/evil-edgepipe.txt"))
    elif kind in ("symlink", "hardlink"):
        info = tarfile.TarInfo("t/a.txt")
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/passwd"
        members.append((info, None))
    elif kind == "unlisted":
        members.append(_file("t/other.txt"))
    else:
        members = [_file("t/a.txt")]
    archive = tmp_path / "evil.tar.gz"
    _evil_tar(archive, members)
    with pytest.raises(BundleError):
        verify_bundle(archive, run_golden=False)
    assert not (tmp_path.parent / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()

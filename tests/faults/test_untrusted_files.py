"""Untrusted files: a pickle naming os.system is refused before it runs, npz never unpickles, files over the
size cap and image bombs are refused before they are read or decoded, each error naming the file."""
import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
import zlib

import jax
import numpy as np
import pytest
import scipy.sparse

from data_helpers import make_capture
from headsup_jax.data.capture import check_capture
from headsup_jax.data.io import decode_image, encode_png, image_size
from headsup_jax.errors import InputError
from headsup_jax.export.ply import load_ply
from headsup_jax.geometry import load_template
from headsup_jax.geometry.obj import read_obj, write_obj
from headsup_jax.geometry.procedural import procedural_template
from headsup_jax.limits import MAX_FILE_BYTES, MAX_IMAGE_PIXELS, FileTooLargeError
from headsup_jax.safe_pickle import UnsafePickleError, load_pickle


class RunsCommand:
    """Unpickles by calling os.system(command): what a crafted model file does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def small():
    return procedural_template(num_rings=6, segments=8, num_identity=2)


def flame_model(small, **extra):
    """A FLAME-like dict: what the official pickle holds (arrays, a sparse J_regressor, strings)."""
    V = len(small.vertices)
    return {"v_template": small.vertices.astype(np.float64), "f": small.faces.astype(np.uint32),
            "shapedirs": np.zeros((V, 3, 310)), "J_regressor": scipy.sparse.csc_matrix(np.eye(5, V)),
            "kintree_table": np.zeros((2, 5), np.int64), "bs_style": "lbs", **extra}


def test_flame_pickle_naming_os_system_is_refused_without_running(small, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(flame_model(small, payload=RunsCommand(f"touch {marker}"))))
    assert ("STACK_GLOBAL", None) in [(op.name, arg) for op, arg, _ in pickletools.genops(path.read_bytes())]
    with pytest.raises(UnsafePickleError, match=rf"{path}: refusing to load global '{os.system.__module__}\.system'"):
        load_template(f"flame:{path}")
    assert not marker.exists()
    (tmp_path / "eval.pkl").write_bytes(pickle.dumps(eval))
    with pytest.raises(UnsafePickleError, match=r"'builtins\.eval'"):  # nothing outside the allow-list
        load_template(f"flame:{tmp_path / 'eval.pkl'}")


def test_flame_pickle_with_sparse_regressor_still_loads(small, tmp_path):
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps(flame_model(small), protocol=4))
    write_obj(tmp_path / "head_template.obj", small.vertices, small.faces, small.uvs, small.face_uvs)
    t = load_template(f"flame:{path}")
    np.testing.assert_allclose(t.vertices, small.vertices)
    assert t.identity_deltas.shape == (300, len(small.vertices), 3)


def test_numpy_pickle_protocol0_os_system_is_refused(tmp_path):
    """A protocol-0 pickle whose only global is os.system: GLOBAL 'os system', then REDUCE would call it."""
    marker = tmp_path / "ran"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert ("GLOBAL", "os system") in ops and ("REDUCE", None) in ops  # a well-formed os.system call
    (tmp_path / "evil.ckpt").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match=r"evil\.ckpt.*'os\.system'"):
        load_pickle(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_numpy_pickle_loads_arrays_and_containers(tmp_path):
    """What numpy needs is admitted at protocols 3 to 5 (Python 3's): arrays (any dtype, empty too), scalars,
    dicts (ordered too), lists, tuples."""
    rng = np.random.default_rng(0)
    tree = {"a": collections.OrderedDict(k=rng.normal(size=(3, 3, 2, 4)).astype(np.float32), i=np.arange(5)),
            "s": np.float32(2.5), "list": [np.ones(2, np.float16), (np.zeros((0, 3)), "text", 7)]}
    for protocol in (3, 4, 5):
        (tmp_path / f"p{protocol}.pkl").write_bytes(pickle.dumps(tree, protocol=protocol))
        got = load_pickle(tmp_path / f"p{protocol}.pkl")
        for want, have in zip(jax.tree.leaves(tree), jax.tree.leaves(got)):
            assert type(have) is type(want) and np.asarray(have).dtype == np.asarray(want).dtype
            np.testing.assert_array_equal(have, want)


def test_npz_with_pickled_object_array_is_refused(small, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "flame.npz"
    np.savez(path, v_template=small.vertices, f=small.faces,
             shapedirs=np.array([RunsCommand(f"touch {marker}")], dtype=object))
    with pytest.raises(InputError, match=rf"{path}: array 'shapedirs' holds Python objects \(a pickle\)"):
        load_template(f"flame:{path}")
    with pytest.raises(InputError, match=rf"{path}: array 'shapedirs'"):
        load_template(str(path))  # the ICT archive reader too
    assert not marker.exists()


def test_npz_inflating_past_the_cap_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, x=np.zeros(1 << 20, np.uint8))  # 1 MiB of zeros in ~1 KiB
    assert path.stat().st_size < 1 << 12
    monkeypatch.setattr("headsup_jax.limits.MAX_FILE_BYTES", 1 << 16)
    with pytest.raises(FileTooLargeError, match=rf"{path}: its arrays inflate to \d+ bytes"):
        load_template(str(path))


def test_npz_member_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path):
    """A .npy header declaring 8 TB of float64 over 8 bytes of data (np.load would allocate the array first)."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("vertices.npy", member.getvalue() + bytes(8))
    with pytest.raises(FileTooLargeError, match=rf"{path}: array 'vertices' declares \[1000000000000\] float64"):
        load_template(str(path))


def sparse_file(path, size=MAX_FILE_BYTES + 1):
    """A file of `size` bytes taking no disk space (nothing written)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@pytest.mark.parametrize("name, load", [
    ("model.pkl", lambda p: load_template(f"flame:{p}")), ("model.npz", lambda p: load_template(str(p))),
    ("head.obj", read_obj), ("splats.ply", load_ply), ("weights.pkl", load_pickle)])
def test_files_over_the_size_cap_are_refused_unread(tmp_path, name, load):
    path = sparse_file(tmp_path / name)
    with pytest.raises(FileTooLargeError, match=rf"{path}: {MAX_FILE_BYTES + 1} bytes, over the"):
        load(path)


def png_bomb(width, height) -> bytes:
    """A valid PNG header (IHDR with its CRC) declaring width x height RGB pixels, a token IDAT, IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [100_000, 10_000])  # over pillow's own cap; over ours only
def test_image_bomb_is_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_IMAGE_PIXELS
    data = png_bomb(side, side)
    assert len(data) < 200
    for read in (image_size, decode_image):
        with pytest.raises(FileTooLargeError, match=r"cam00\.png: image .*not decoded"):
            read(data, source=tmp_path / "cam00.png")
    cams = make_capture(tmp_path / "subject", n=2)  # a capture folder with one bomb among its images
    (tmp_path / "subject" / "images" / f"{cams[0].id}.png").write_bytes(data)
    capture, problems = check_capture(tmp_path / "subject")
    assert capture is None and len(problems) == 1
    assert problems[0].file == f"images/{cams[0].id}.png" and "not decoded" in problems[0].message


def test_image_within_the_cap_decodes():
    image = np.arange(24 * 32 * 3, dtype=np.uint8).reshape(24, 32, 3)
    np.testing.assert_array_equal(decode_image(encode_png(image)), image)

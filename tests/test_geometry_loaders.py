"""Template loaders (procedural, ICT archive and folder, FLAME, OBJ + blendshapes) and their errors."""
import pickle
import sys
import types

import numpy as np
import pytest

from geometry_reference import ICT, ICT_SKIP_REASON
from headsup_jax.geometry import HeadTemplate, load_template
from headsup_jax.geometry.loaders import save_obj_template
from headsup_jax.geometry.obj import read_obj, write_obj
from headsup_jax.geometry.procedural import procedural_template


@pytest.fixture(scope="module")
def small():
    return procedural_template(num_rings=10, segments=12, num_identity=4)


def edges(faces):
    e = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    return np.unique(e, axis=0, return_counts=True)


def test_procedural_is_a_closed_outward_head():
    t = load_template("procedural")
    _, counts = edges(t.faces)
    assert set(counts.tolist()) == {2}  # closed 2-manifold: every edge shared by two triangles
    v = t.vertices.astype(np.float64)[t.faces]
    volume = np.einsum("fc,fc->f", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6
    size = t.vertices.max(0) - t.vertices.min(0)
    assert 0.003 < volume < 0.01  # litres of a head and neck, positive: faces wound outward
    assert 0.15 < size[0] < 0.25 and 0.3 < size[1] < 0.4 and 0.2 < size[2] < 0.3  # metres
    front = t.vertices[np.argmax(t.vertices[:, 2])]
    assert abs(front[0]) < 1e-3 and -0.03 < front[1] < 0.02  # the nose tip faces +z, centred
    assert t.identity_deltas.shape == (16, len(t.vertices), 3)
    # identity modes are smooth: across every edge the displacement changes by a small fraction of the
    # edge length (a unit coefficient cannot fold the surface)
    e, _ = edges(t.faces)
    length = np.linalg.norm(t.vertices[e[:, 0]] - t.vertices[e[:, 1]], axis=1)
    for mode in t.identity_deltas:
        amp = np.linalg.norm(mode, axis=1).max()
        assert 1e-3 < amp < 0.03
        assert (np.linalg.norm(mode[e[:, 0]] - mode[e[:, 1]], axis=1) / length).max() < 0.3
    jaw = t.expression_deltas[t.expression_names.index("jawOpen")]
    assert jaw[:, 1].min() < -0.01 and jaw[t.vertices[:, 1] > 0].max() == 0  # the chin drops, the skull stays
    assert load_template("procedural").digest() == t.digest()  # deterministic


def test_ict_archive():
    if not ICT.exists():
        pytest.skip(ICT_SKIP_REASON)
    t = load_template("ict")
    assert t.vertices.shape == (26719, 3) and t.faces.shape == (52220, 3)
    size = t.vertices.max(0) - t.vertices.min(0)
    assert 0.2 < size[0] < 0.3 and 0.25 < size[1] < 0.45  # centimetres became metres
    assert len(t.expression_names) == 53 and "jawOpen" in t.expression_names
    assert t.identity_deltas.shape == (100, 26719, 3) and t.landmarks.shape == (68,)
    assert np.abs(t.expression_deltas).max() < 0.05
    assert sum(len(f) for f in t.regions.values()) == len(t.faces)
    assert t.regions["face"].size > 18000 and t.regions["teeth"].size > 8000
    assert load_template(str(ICT)).digest() == t.digest()


def test_ict_folder_layout(small, tmp_path):
    folder = tmp_path / "ICT-FaceKit" / "FaceXModel"
    cm = small.vertices * 100
    write_obj(folder / "generic_neutral_mesh.obj", cm, small.faces, small.uvs, small.face_uvs)
    write_obj(folder / "identity000.obj", cm + 100 * small.identity_deltas[3], small.faces)
    for k in (0, 3):
        name = small.expression_names[k]
        write_obj(folder / f"{name}.obj", cm + 100 * small.expression_deltas[k], small.faces)
    t = load_template(str(tmp_path / "ICT-FaceKit"))
    np.testing.assert_allclose(t.vertices, small.vertices, atol=1e-6)
    assert t.expression_names == tuple(sorted([small.expression_names[0], small.expression_names[3]]))
    np.testing.assert_allclose(t.expression_deltas[t.expression_names.index(small.expression_names[3])],
                               small.expression_deltas[3], atol=1e-6)
    np.testing.assert_allclose(t.identity_deltas[0], small.identity_deltas[3], atol=1e-6)
    assert t.regions == {}  # not the ICT vertex count: no ICT parts


def test_obj_and_blendshape_folder_round_trip(small, tmp_path):
    folder = save_obj_template(small, tmp_path / "head.obj")
    assert folder == tmp_path / "head_blendshapes" and len(list(folder.glob("*.obj"))) == len(small.expression_names)
    t = load_template(str(tmp_path / "head.obj"))
    np.testing.assert_allclose(t.vertices, small.vertices, atol=1e-7)
    np.testing.assert_array_equal(t.faces, small.faces)
    np.testing.assert_allclose(t.uvs, small.uvs, atol=1e-7)
    np.testing.assert_array_equal(t.face_uvs, small.face_uvs)
    assert set(t.expression_names) == set(small.expression_names)
    for k, name in enumerate(small.expression_names):
        np.testing.assert_allclose(t.expression_deltas[t.expression_names.index(name)], small.expression_deltas[k],
                                   atol=1e-6)
    assert t.regions.keys() == small.regions.keys()
    for name in small.regions:
        np.testing.assert_array_equal(t.regions[name], small.regions[name])
    other = load_template(f"{tmp_path / 'head.obj'},{folder}")  # explicit folder
    assert set(other.expression_names) == set(small.expression_names)


def flame_files(small, tmp_path, fmt):
    V = len(small.vertices)
    rng = np.random.default_rng(0)
    shapedirs = rng.normal(0, 1e-3, (V, 3, 310)).astype(np.float64)
    model = {"v_template": small.vertices.astype(np.float64), "shapedirs": shapedirs,
             "f": small.faces.astype(np.uint32)}
    write_obj(tmp_path / "head_template.obj", small.vertices, small.faces, small.uvs, small.face_uvs)
    if fmt == "npz":
        path = tmp_path / "flame.npz"
        np.savez(path, **model)
    else:  # the official file pickles chumpy arrays: imitate them with a throwaway module
        chumpy = types.ModuleType("chumpy")
        chumpy_ch = types.ModuleType("chumpy.ch")

        class Ch:
            def __init__(self, x):
                self.x = x

        Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
        chumpy_ch.Ch = Ch
        sys.modules.update({"chumpy": chumpy, "chumpy.ch": chumpy_ch})
        try:
            path = tmp_path / "generic_model.pkl"
            chumpy_model = {**model, "shapedirs": Ch(shapedirs), "v_template": Ch(model["v_template"])}
            path.write_bytes(pickle.dumps(chumpy_model))
        finally:
            del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    return path, shapedirs


@pytest.mark.parametrize("fmt", ["npz", "pkl"])
def test_flame(small, tmp_path, fmt):
    path, shapedirs = flame_files(small, tmp_path, fmt)
    t = load_template(f"flame:{path}")
    np.testing.assert_allclose(t.vertices, small.vertices)
    np.testing.assert_array_equal(t.faces, small.faces)
    np.testing.assert_array_equal(t.face_uvs, small.face_uvs)
    assert t.identity_deltas.shape == (300, len(small.vertices), 3) and len(t.expression_names) == 10
    np.testing.assert_allclose(t.identity_deltas[7], shapedirs[:, :, 7], rtol=1e-6)
    np.testing.assert_allclose(t.expression_deltas[2], shapedirs[:, :, 302], rtol=1e-6)
    assert t.expression_names[0] == "flame_exp_000"


def test_flame_errors(small, tmp_path):
    path, _ = flame_files(small, tmp_path, "npz")
    write_obj(tmp_path / "other.obj", small.vertices, small.faces[::-1], small.uvs, small.face_uvs[::-1])
    with pytest.raises(ValueError, match="other.obj: f: its .* faces differ from flame.npz"):
        load_template(f"flame:{path},{tmp_path / 'other.obj'}")
    np.savez(tmp_path / "bad.npz", v_template=small.vertices, f=small.faces)
    with pytest.raises(ValueError, match="bad.npz: missing field 'shapedirs'"):
        load_template(f"flame:{tmp_path / 'bad.npz'}")


def write_text(path, text):
    path.write_text(text)
    return path


def test_malformed_obj_files_name_file_and_field(small, tmp_path):
    base = "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n"
    cases = {
        "bad_index.obj": (base + "f 1/1 2/2 900/3\n",
                          "bad_index.obj:7: face references vertex 900 but the file has 3 vertices"),
        "nan.obj": (base.replace("v 1 0 0", "v 1 nan 0") + "f 1/1 2/2 3/3\n", "nan.obj:2: v: non-finite"),
        "text.obj": (base.replace("v 1 0 0", "v 1 x 0") + "f 1/1 2/2 3/3\n", "text.obj:2: v: not a number"),
        "mixed.obj": (base + "v 1 1 0\nf 1/1 2/2 3/3\nf 2 4 3\n", "mixed.obj:9: face lacks texture indices"),
        "short.obj": (base + "f 1/1 2/2\n", "short.obj:7: face has 2 corners"),
        "empty.obj": ("# nothing\n", "empty.obj: no vertices"),
    }
    for name, (text, message) in cases.items():
        with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
            read_obj(write_text(tmp_path / name, text))
    no_uv = write_text(tmp_path / "no_uv.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(ValueError, match="no_uv.obj: faces have no texture coordinates"):
        load_template(str(no_uv))
    # a blendshape with the wrong vertex count
    save_obj_template(small, tmp_path / "head.obj")
    write_obj(tmp_path / "head_blendshapes" / "jawOpen.obj", small.vertices[:-5], small.faces[:10])
    with pytest.raises(ValueError, match=f"jawOpen.obj: v: {len(small.vertices) - 5} vertices but head.obj has "
                                         f"{len(small.vertices)}"):
        load_template(str(tmp_path / "head.obj"))
    faces = small.faces.copy()
    faces[3] = faces[3, ::-1]
    write_obj(tmp_path / "head_blendshapes" / "jawOpen.obj", small.vertices, faces)
    with pytest.raises(ValueError, match=f"jawOpen.obj: f: its {len(faces)} faces differ from the {len(faces)} of "
                                         "head.obj"):
        load_template(str(tmp_path / "head.obj"))
    with pytest.raises(ValueError, match="unknown template 'head.ply'"):
        load_template("head.ply")
    with pytest.raises(FileNotFoundError, match="missing.obj: template OBJ not found"):
        load_template(str(tmp_path / "missing.obj"))
    with pytest.raises(FileNotFoundError, match="nowhere: blendshape folder not found"):
        load_template(f"{tmp_path / 'head.obj'},{tmp_path / 'nowhere'}")


def test_template_validation_names_field(small):
    fields = dict(small.__dict__)
    bad_v = small.vertices.copy()
    bad_v[5, 1] = np.nan
    cases = [
        ({"vertices": bad_v}, "vertices: 1 non-finite values \\(first at index \\[5, 1\\]\\)"),
        ({"faces": small.faces.astype(np.int64)}, "faces: dtype int64, expected int32"),
        ({"faces": np.where(small.faces == 0, 10 ** 6, small.faces).astype(np.int32)},
         "faces: face 0 references index"),
        ({"face_uvs": small.face_uvs[:-1]}, "face_uvs: shape \\[.*\\], expected \\[.*, 3\\]"),
        ({"expression_deltas": small.expression_deltas[:, :-1]}, "expression_deltas: shape"),
        ({"identity_deltas": small.identity_deltas.astype(np.float16)}, "identity_deltas: dtype float16"),
        ({"landmarks": np.array([len(small.vertices)])}, "landmarks: vertex indices"),
        ({"regions": {"face": np.array([len(small.faces)])}}, "regions\\['face'\\]: face indices"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=f"procedural: {message}"):
            HeadTemplate(**{**fields, **change})


def test_ict_archive_errors(tmp_path, monkeypatch):
    np.savez(tmp_path / "broken.npz", vertices=np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="broken.npz: missing arrays \\['faces'"):
        load_template(str(tmp_path / "broken.npz"))
    monkeypatch.setenv("HEADSUP_ICT_PATH", str(tmp_path / "nowhere.npz"))
    with pytest.raises(FileNotFoundError, match="nowhere.npz; set HEADSUP_ICT_PATH"):
        load_template("ict")


def test_ict_folder_with_the_real_head(tmp_path):
    """The ICT-FaceKit OBJ layout rebuilt from the archive (in a temporary folder): same head, same parts."""
    if not ICT.exists():
        pytest.skip(ICT_SKIP_REASON)
    ref = load_template(str(ICT))
    folder = tmp_path / "FaceXModel"
    cm = ref.vertices.astype(np.float64) * 100
    write_obj(folder / "generic_neutral_mesh.obj", cm, ref.faces, ref.uvs, ref.face_uvs)
    write_obj(folder / "identity000.obj", cm + 100 * ref.identity_deltas[0], ref.faces)
    jaw = ref.expression_names.index("jawOpen")
    write_obj(folder / "jawOpen.obj", cm + 100 * ref.expression_deltas[jaw], ref.faces)
    t = load_template(str(tmp_path))
    np.testing.assert_allclose(t.vertices, ref.vertices, atol=1e-7)
    assert t.regions.keys() == ref.regions.keys()
    for name in ref.regions:
        np.testing.assert_array_equal(t.regions[name], ref.regions[name])
    assert t.expression_names == ("jawOpen",)
    np.testing.assert_allclose(t.expression_deltas[0], ref.expression_deltas[jaw], atol=1e-7)
    np.testing.assert_allclose(t.identity_deltas[0], ref.identity_deltas[0], atol=1e-7)

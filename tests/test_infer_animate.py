"""`headsup animate`: the template rig carries a reconstructed head's Gaussians (zero coefficients give the
reconstruction exactly; jawOpen moves the chin, not the forehead; rotations follow the surface), animation
files (JSON, CSV, Live Link Face exports) are read by ARKit name or refused naming file, frame and name,
and the command writes an mp4 and a PLY sequence of F frames."""
import dataclasses
import json

import imageio.v3 as iio
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from data_helpers import make_capture
from infer_helpers import H, W, shared_workdir

from headsup_jax.cli import main
from headsup_jax.data.blendshapes import ARKIT_BLENDSHAPES
from headsup_jax.errors import InputError
from headsup_jax.export.ply import load_ply, save_ply
from headsup_jax.geometry import anchor, build_atlas, deform
from headsup_jax.geometry.procedural import MOUTH_Y, procedural_template
from headsup_jax.geometry.rig import template_channels
from headsup_jax.infer.animate import HeadFileError, animate, animate_rig, neutral_head
from headsup_jax.infer.blendshape_files import AnimationFileError, read_animation

FIELDS = ("means", "quats", "scales", "opacities", "sh")


@pytest.fixture(scope="module")
def rig():
    """The procedural template, its atlas at 64 and a random head's raw predictions and Gaussians."""
    template = procedural_template()
    atlas = build_atlas(template, 64)
    rng = np.random.default_rng(0)
    G = atlas.count
    raw = dict(offsets=rng.normal(0, 2e-3, (G, 3)), rotations=rng.normal(0, 0.3, (G, 4)),
               log_scales=rng.normal(0, 0.3, (G, 3)), opacity_logits=rng.normal(0, 1, G),
               sh=rng.normal(0, 0.3, (G, 4, 3)))
    raw = {k: v.astype(np.float32) for k, v in raw.items()}
    gaussians = anchor(template.vertices, atlas, **raw)
    return template, atlas, raw, neutral_head(template, atlas, gaussians)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from headsup_jax.infer.trained import load_trained

    return load_trained(shared_workdir(tmp_path_factory))


def coefficients(template, frames):
    """[{name: weight}] -> [F, E]"""
    out = np.zeros((len(frames), len(template.expression_names)), np.float32)
    for f, frame in enumerate(frames):
        for name, w in frame.items():
            out[f, template.expression_names.index(name)] = w
    return out


def frame(gaussians, f):
    return {k: np.asarray(getattr(gaussians, k))[f] for k in FIELDS}


def anchor_ys(template, atlas):
    """Height and depth of each Gaussian's template anchor point. [G], [G]"""
    point = np.asarray(anchor(template.vertices, atlas).means)
    return point[:, 1], point[:, 2]


def test_zero_coefficients_give_the_reconstruction_exactly(tmp_path, trained):
    from headsup_jax.infer.reconstruct import reconstruct

    make_capture(tmp_path / "alice", n=6, width=W, height=H, seed=3)
    result = reconstruct(trained, tmp_path / "alice")
    head = neutral_head(trained.template, trained.atlas, result.head)
    coeffs = coefficients(trained.template, [{}, {"jawOpen": 1.0, "mouthSmile_L": 0.5}, {}, {"eyeBlink_R": 1.0}])
    frames = animate(head, coeffs, "rig")
    for f in (0, 2):
        for k, value in frame(frames, f).items():
            np.testing.assert_array_equal(value, getattr(result.head, k), err_msg=k)
    assert np.abs(frame(frames, 1)["means"] - result.head.means).max() > 1e-3

    # the PLY route: the file's Gaussians exactly at zero, and the same animation as the in-memory head
    save_ply(result.head, tmp_path / "head.ply")
    loaded = load_ply(tmp_path / "head.ply")
    from_file = animate_rig(neutral_head(trained.template, trained.atlas, loaded, "head.ply"), coeffs)
    for k in FIELDS:
        np.testing.assert_array_equal(frame(from_file, 0)[k], getattr(loaded, k), err_msg=k)
        np.testing.assert_allclose(frame(from_file, 1)[k], frame(frames, 1)[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_rig_is_the_models_anchoring_on_the_deformed_template(rig):
    template, atlas, raw, head = rig
    rng = np.random.default_rng(1)
    coeffs = rng.uniform(0, 1, (3, len(template.expression_names))).astype(np.float32)
    frames = animate_rig(head, coeffs)
    for f in range(3):
        want = anchor(deform(template, None, coeffs[f]), atlas, **raw)
        got = frame(frames, f)
        np.testing.assert_allclose(got["means"], want.means, atol=1e-6)
        sign = np.sign(np.sum(got["quats"] * np.asarray(want.quats), -1, keepdims=True))  # q and -q: one rotation
        np.testing.assert_allclose(got["quats"], sign * np.asarray(want.quats), atol=2e-6)
        np.testing.assert_allclose(got["scales"], want.scales, rtol=2e-6)
        np.testing.assert_array_equal(got["opacities"], want.opacities)


def test_jaw_open_moves_the_lower_face_and_not_the_forehead(rig):
    template, atlas, _, head = rig
    frames = animate_rig(head, coefficients(template, [{"jawOpen": w} for w in (0.0, 0.5, 1.0)]))
    y, z = anchor_ys(template, atlas)
    chin = (y < MOUTH_Y - 0.025) & (y > -0.095) & (z > 0.03)  # below the mouth, in front
    forehead = (y > 0.05) & (z > 0.03)
    assert chin.sum() > 20 and forehead.sum() > 20
    drop = [frame(frames, f)["means"][chin, 1] - head.gaussians.means[chin, 1] for f in (1, 2)]
    assert np.median(drop[0]) < -5e-3 and np.median(drop[1]) < 2 * np.median(drop[0]) + 1e-4  # down, more at 1
    for f in (1, 2):
        for k in ("means", "quats", "scales"):
            assert np.abs(frame(frames, f)[k][forehead] - getattr(head.gaussians, k)[forehead]).max() <= 1e-6, k


def test_rotations_follow_a_rigid_turn_of_the_surface(rig):
    """A blendshape that turns the whole template rigidly turns every Gaussian with it: means R m, rotation
    matrices R Q, the same scales (checked against scipy's rotations)."""
    template, atlas, _, head = rig
    turn = Rotation.from_euler("yx", [35.0, 15.0], degrees=True)
    R = turn.as_matrix()
    v = template.vertices.astype(np.float64)
    turned = dataclasses.replace(template, expression_names=template.expression_names + ("turnHead",),
                                 expression_deltas=np.concatenate([template.expression_deltas,
                                                                   (v @ R.T - v)[None].astype(np.float32)]))
    moved = neutral_head(turned, atlas, head.gaussians)
    coeffs = np.zeros((1, len(turned.expression_names)), np.float32)
    coeffs[0, -1] = 1.0
    got = frame(animate_rig(moved, coeffs), 0)
    np.testing.assert_allclose(got["means"], head.gaussians.means @ R.T, atol=2e-6)
    before = Rotation.from_quat(head.gaussians.quats[:, [1, 2, 3, 0]]).as_matrix()  # scipy: (x, y, z, w)
    after = Rotation.from_quat(got["quats"][:, [1, 2, 3, 0]]).as_matrix()
    np.testing.assert_allclose(after, R @ before, atol=1e-4)  # float32 vertices, small triangles
    np.testing.assert_allclose(got["scales"], head.gaussians.scales, rtol=1e-4)


def test_heads_not_in_atlas_order_are_refused(rig):
    template, atlas, _, head = rig
    g = head.gaussians
    with pytest.raises(HeadFileError, match=r"bg\.ply: .* Gaussians, but .*atlas order"):
        neutral_head(template, atlas, dataclasses.replace(g, means=np.concatenate([g.means, g.means[:5]])), "bg.ply")
    order = np.random.default_rng(0).permutation(atlas.count)
    with pytest.raises(HeadFileError, match=r"sorted\.ply: .*cm from their template anchors"):
        neutral_head(template, atlas, dataclasses.replace(g, means=g.means[order]), "sorted.ply")


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, text, message", [
    ("unknown.json", '[{"jawOpen": 0.2}, {"jawOpen": 0.3, "smirk": 0.5}]',
     r"unknown\.json: frame 1: unknown blendshape name 'smirk'"),
    ("big.csv", "Timecode,JawOpen,EyeBlinkLeft\n00:00:00:00.0,0.1,0\n00:00:00:01.0,1.7,0\n",
     r"big\.csv: frame 1 \(line 3\): 'JawOpen': weight 1\.7 is outside \[0, 1\]"),
    ("nan.json", '[{"eyeBlink_L": NaN}]', r"nan\.json: frame 0: 'eyeBlink_L': weight nan is outside"),
    ("nan.csv", "jawOpen\nnan\n", r"nan\.csv: frame 0 \(line 2\): 'jawOpen': weight nan is outside"),
    ("noheader.csv", "0.1,0.2\n0.3,0.4\n",
     r"noheader\.csv: line 1: the first row must be a header of blendshape names"),
    ("text.csv", "jawOpen\nwide\n", r"text\.csv: frame 0 \(line 2\): 'jawOpen': 'wide' is not a number"),
    ("twice.json", '[{"eyeBlinkLeft": 0.1, "eyeBlink_L": 0.2}]',
     r"twice\.json: frame 0: 'eyeBlink_L' and 'eyeBlinkLeft' both set"),
    ("object.json", '{"jawOpen": 0.1}', r"object\.json: expected a JSON list"),
])
def test_bad_animation_files_are_refused_by_file_frame_and_name(tmp_path, rig, name, text, message):
    with pytest.raises(AnimationFileError, match=message) as e:
        read_animation(write(tmp_path / name, text), rig[0])
    assert isinstance(e.value, InputError)


def test_live_link_face_csv_is_read_by_arkit_name(tmp_path, rig):
    template = rig[0]
    pose = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
            "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]
    names = [n[0].upper() + n[1:] for n in ARKIT_BLENDSHAPES]
    header = ["Timecode", "BlendShapeCount", *names, *pose]
    rng = np.random.default_rng(2)
    weights = rng.uniform(0, 1, (3, len(names)))
    rows = [[f"17:02:35:{f:02d}.416", "61", *(f"{w:.6f}" for w in weights[f]), *(["-0.2"] * len(pose))]
            for f in range(3)]
    path = write(tmp_path / "livelink.csv", "\n".join(",".join(r) for r in [header, *rows]) + "\n")
    animation = read_animation(path, template)
    assert animation.coefficients.shape == (3, len(template.expression_names))
    column = {n: i for i, n in enumerate(names)}
    for ours, theirs in [("eyeBlink_L", "EyeBlinkLeft"), ("mouthSmile_R", "MouthSmileRight"), ("jawOpen", "JawOpen"),
                         ("browInnerUp", "BrowInnerUp"), ("browDown_R", "BrowDownRight")]:
        np.testing.assert_allclose(animation.coefficients[:, template.expression_names.index(ours)],
                                   weights[:, column[theirs]], atol=1e-6)
    ignored = " ".join(animation.ignored)
    for n in ["Timecode (not a blendshape)", "BlendShapeCount (not a blendshape)", "HeadYaw (not a blendshape)",
              "RightEyeRoll (not a blendshape)", "TongueOut (the template 'procedural' has no such shape)"]:
        assert n in ignored


def test_arkit_names_drive_both_sides_of_a_template_split_by_side(rig):
    base = rig[0]
    names = ("browInnerUp_L", "browInnerUp_R", "eyeBlink_L", "mouthLeft")
    template = dataclasses.replace(base, expression_names=names,
                                   expression_deltas=np.zeros((4, base.num_vertices, 3), np.float32))
    channels = template_channels(template)
    assert channels["browinnerup"] == [0, 1] and channels["eyeblinkl"] == [2] and channels["mouthl"] == [3]
    assert "mouth" not in channels  # mouthLeft is an ARKit shape of its own, not a side of "mouth"


def animate_cli(capsys, *args):
    code = main(["animate", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_an_mp4_and_a_ply_sequence_of_every_frame(tmp_path, capsys, trained):
    make_capture(tmp_path / "alice", n=6, width=W, height=H, seed=5)
    frames = [{"jawOpen": w, "EyeBlinkLeft": w / 2} for w in np.linspace(0, 1, 5)]
    anim = write(tmp_path / "anim.json", json.dumps(frames))
    code, out, err = animate_cli(capsys, "--workdir", trained.workdir, "--capture", tmp_path / "alice",
                                 "--blendshapes", anim, "--cameras", "turntable", "--resolution", 32,
                                 "--out", tmp_path / "anim.mp4", "--ply-sequence", tmp_path / "plys")
    assert code == 0, err
    assert "wrote" in out and "5 frames" in out
    video = np.stack(list(iio.imiter(tmp_path / "anim.mp4")))
    assert video.shape[0] == 5 and video.shape[1:] == (32, 24, 3)
    assert np.abs(video[0].astype(int) - video[2].astype(int)).max() > 0  # the turntable moves
    plys = sorted((tmp_path / "plys").iterdir())
    assert [p.name for p in plys] == [f"frame_{f:05d}.ply" for f in range(5)]
    first, last = load_ply(plys[0]), load_ply(plys[-1])
    assert first.count == trained.atlas.count
    assert np.abs(last.means - first.means).max() > 1e-3


def test_cli_head_route_and_its_refusals(tmp_path, capsys, trained):
    from headsup_jax.infer.reconstruct import reconstruct

    make_capture(tmp_path / "bob", n=6, width=W, height=H, seed=6)
    save_ply(reconstruct(trained, tmp_path / "bob").head, tmp_path / "head.ply")
    anim = write(tmp_path / "anim.csv", "Timecode,JawOpen\n0,0\n1,1\n0,0\n")
    code, out, err = animate_cli(capsys, "--head", tmp_path / "head.ply", "--workdir", trained.workdir,
                                 "--blendshapes", anim, "--resolution", 64, "--out", tmp_path / "head.mp4",
                                 "--ply-sequence", tmp_path / "plys")
    assert code == 0, err
    assert "ignored Timecode (not a blendshape)" in out
    plys = [(tmp_path / "plys" / f"frame_{f:05d}.ply").read_bytes() for f in range(3)]
    assert plys[0] == plys[2] != plys[1]  # neutral, jaw open, neutral
    video = np.stack(list(iio.imiter(tmp_path / "head.mp4"))).astype(float)
    assert video.shape == (3, 64, 48, 3)
    change = np.abs(video[1] - video[0]).mean((1, 2))  # [64] per image row, the open jaw against neutral
    assert change[32:].mean() > 2 * change[:32].mean()  # the fixed frontal camera: the lower half changes
    assert np.abs(video[2] - video[0]).mean() < 0.5 * np.abs(video[1] - video[0]).mean()
    code, out, err = animate_cli(capsys, "--head", tmp_path / "head.splat", "--workdir", trained.workdir,
                                 "--blendshapes", anim, "--out", tmp_path / "a.mp4")
    assert code == 2 and ".splat files sort the Gaussians" in err
    code, _, err = animate_cli(capsys, "--head", tmp_path / "head.ply", "--blendshapes", anim,
                               "--out", tmp_path / "a.mp4")
    assert code == 2 and "--head needs exactly one of --workdir" in err
    code, _, err = animate_cli(capsys, "--head", tmp_path / "head.ply", "--workdir", trained.workdir,
                               "--method", "latent", "--blendshapes", anim, "--out", tmp_path / "a.mp4")
    assert code == 2 and "--method latent needs the head's latent Z, which a PLY does not hold" in err
    assert not (tmp_path / "a.mp4").exists()

"""Importers (headsup_jax.data.importers): each format written from one tiny synthetic capture by an
independent writer (pycolmap for COLMAP, the format docs for the JSON ones) and imported back equal to the
original cameras; a distorted OPENCV camera against cv2's own projection; malformed sources rejected by
file and field with no --out left behind; the CLI once."""
import dataclasses
import json
import math
import shutil
import zipfile

import cv2
import numpy as np
import pycolmap
import pytest
from PIL import Image

from data_helpers import make_capture
from headsup_jax.cli import main
from headsup_jax.data.capture import load_capture
from headsup_jax.data.importers import import_capture
from headsup_jax.data.io import decode_image, encode_png
from headsup_jax.errors import InputError

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])
K_TOL = 1e-4  # pixels: K goes through float32 in cameras.json
T_TOL = 1e-5  # metres / rotation entries: float32 storage and pycolmap's quaternion round trip


def original(tmp_path, width=32, height=24):
    """(cameras, {id: image}, {id: mask}) of a 4-camera synthetic capture."""
    make_capture(tmp_path / "orig", width=width, height=height)
    cap = load_capture(tmp_path / "orig")
    images = {c.id: decode_image(cap.image_files[c.id].read_bytes()) for c in cap.cameras}
    masks = {c.id: decode_image(cap.mask_files[c.id].read_bytes(), "L") for c in cap.cameras}
    return cap.cameras, images, masks


def assert_same(capture, cams, images, masks, lossy=()):
    """Cameras equal (K_TOL, T_TOL), images and masks equal (mean |difference| < 4 for ids in `lossy`)."""
    assert [c.id for c in capture.cameras] == [c.id for c in cams]
    for got, want in zip(capture.cameras, cams):
        np.testing.assert_allclose(got.K, want.K, atol=K_TOL)
        np.testing.assert_allclose(got.world_to_cam, want.world_to_cam, atol=T_TOL)
        assert (got.width, got.height) == (want.width, want.height)
        img = decode_image(capture.image_files[got.id].read_bytes())
        if got.id in lossy:
            assert np.abs(img.astype(float) - images[want.id]).mean() < 4
        else:
            np.testing.assert_array_equal(img, images[want.id])
        if masks is not None:
            np.testing.assert_array_equal(decode_image(capture.mask_files[got.id].read_bytes(), "L"), masks[want.id])


def assert_rejected(tmp_path, fmt, src, file, field, frame=None):
    out = tmp_path / "bad_out"
    with pytest.raises(InputError) as e:
        import_capture(fmt, src, out, frame=frame)
    assert file in str(e.value) and field in str(e.value), str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".bad_out*"))


# ---------------------------------------------------------------------------------------------------- COLMAP
COLMAP_MODELS = [("PINHOLE", lambda K: [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]),
                 ("SIMPLE_PINHOLE", lambda K: [K[0, 0], K[0, 2], K[1, 2]]),
                 ("SIMPLE_RADIAL", lambda K: [K[0, 0], K[0, 2], K[1, 2], 0.0]),
                 ("RADIAL", lambda K: [K[0, 0], K[0, 2], K[1, 2], 0.0, 0.0])]


def write_colmap(src, cams, images, masks, ext):
    rec = pycolmap.Reconstruction()
    for k, c in enumerate(cams):
        model, params = COLMAP_MODELS[k % len(COLMAP_MODELS)]
        cid = 10 + 3 * k  # non-contiguous camera and image ids
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=c.width, height=c.height,
                                                        params=params(np.asarray(c.K, float)), camera_id=cid))
        image = pycolmap.Image(name=f"{c.id}.png", camera_id=cid, image_id=100 + 7 * k)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d(np.asarray(c.world_to_cam, float)[:3]))
    model_dir = src / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (rec.write_text if ext == "txt" else rec.write_binary)(str(model_dir))
    for folder, data, suffix in (("images", images, ""), ("masks", masks, ".png")):
        (src / folder).mkdir()
        for cid, a in data.items():
            (src / folder / f"{cid}.png{suffix}").write_bytes(encode_png(a))
    return model_dir


@pytest.mark.parametrize("ext", ["txt", "bin"])
def test_colmap_model_written_by_pycolmap_imports_to_the_original_cameras(tmp_path, ext):
    cams, images, masks = original(tmp_path)
    write_colmap(tmp_path / "colmap", cams, images, masks, ext)
    capture, units, undistorted = import_capture("colmap", tmp_path / "colmap", tmp_path / "out")
    assert units == "m" and undistorted == []
    assert_same(capture, cams, images, masks)


def test_colmap_opencv_camera_is_undistorted_where_cv2_projects_a_known_point(tmp_path):
    w, h = 64, 48
    K = np.array([[58.0, 0, 31.3], [0, 57.0, 24.6], [0, 0, 1]])  # ours: pixel centres at +0.5
    dist = np.array([-0.25, 0.06, 0.003, -0.002])
    X, t = np.array([0.09, -0.07, 0.0]), np.array([0.0, 0.0, 0.5])
    K_cv = K.copy()
    K_cv[:2, 2] -= 0.5  # OpenCV: pixel centres at integers
    p = cv2.projectPoints(X[None], np.zeros(3), t, K_cv, dist)[0].reshape(2) + 0.5  # distorted, ours
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    blob = np.exp(-((jj - p[0]) ** 2 + (ii - p[1]) ** 2) / (2 * 1.5 ** 2))
    src = tmp_path / "colmap"
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(model="OPENCV", width=w, height=h, camera_id=3,
                                                    params=[K[0, 0], K[1, 1], K[0, 2], K[1, 2], *dist]))
    rec.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=3, image_id=1),
                                     pycolmap.Rigid3d(np.hstack([np.eye(3), t[:, None]])))
    (src / "sparse").mkdir(parents=True)
    rec.write_text(str(src / "sparse"))
    (src / "images").mkdir()
    gray = (blob * 255).round().astype(np.uint8)
    (src / "images" / "a.png").write_bytes(encode_png(np.repeat(gray[..., None], 3, -1)))

    capture, _, undistorted = import_capture("colmap", src, tmp_path / "out")
    assert undistorted == ["a"]
    cam = capture.cameras[0]
    Kn = np.asarray(cam.K, float)
    q = Kn @ (X + t)
    q = q[:2] / q[2]  # where the pinhole camera sees X
    Kn_cv = Kn.copy()
    Kn_cv[:2, 2] -= 0.5
    q_cv2 = cv2.undistortPoints(p[None, None] - 0.5, K_cv, dist, P=Kn_cv).reshape(2) + 0.5
    np.testing.assert_allclose(q, q_cv2, atol=1e-3)  # our K and pose agree with cv2's undistortion of the point
    img = decode_image(capture.image_files["a"].read_bytes())[..., 0].astype(float)
    near = (np.hypot(jj - q[0], ii - q[1]) < 5) * img
    centroid = np.array([(near * jj).sum(), (near * ii).sum()]) / near.sum()
    np.testing.assert_allclose(centroid, q, atol=0.25)  # the resampled image shows X there (pixels)
    assert 0 < cam.K[0, 2] < w and cam.K[0, 1] == 0


@pytest.mark.parametrize("case, file, field", [
    ("model", "cameras.txt", "MODEL"), ("camera_id", "images.txt", "CAMERA_ID"),
    ("image", "a.png", "file"), ("truncated", "images.bin", "image 0")])
def test_colmap_malformed_models_are_rejected_by_file_and_field(tmp_path, case, file, field):
    src = tmp_path / "colmap"
    (src / "images").mkdir(parents=True)
    if case != "image":
        (src / "images" / "a.png").write_bytes(encode_png(np.zeros((24, 32, 3), np.uint8)))
    model = "FOV" if case == "model" else "PINHOLE"
    cid = 9 if case == "camera_id" else 1
    (src / "cameras.txt").write_text(f"# c\n1 {model} 32 24 30 30 16 12\n")
    (src / "images.txt").write_text(f"# i\n1 1 0 0 0 0 0 1 {cid} a.png\n\n")
    if case == "truncated":
        rec = pycolmap.Reconstruction()
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model="PINHOLE", width=32, height=24, camera_id=1,
                                                        params=[30, 30, 16, 12]))
        rec.add_image_with_trivial_frame(pycolmap.Image(name="a.png", camera_id=1, image_id=1), pycolmap.Rigid3d())
        rec.write_binary(str(src))
        data = (src / "images.bin").read_bytes()
        (src / "images.bin").write_bytes(data[:40])
    assert_rejected(tmp_path, "colmap", src, file, field)


# ---------------------------------------------------------------------------------------------- transforms.json
def write_transforms(src, cams, images, masks, scale=1.0):
    """transforms.json per the nerfstudio/instant-ngp docs: camera-to-world in OpenGL axes."""
    K = np.asarray(cams[0].K, float)
    w, h = cams[0].width, cams[0].height
    meta = {"camera_angle_x": 2 * math.atan(0.5 * w / K[0, 0]), "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
            "w": w, "h": h, "k1": 0.0, "frames": []}
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for k, c in enumerate(cams):
        c2w = np.linalg.inv(np.asarray(c.world_to_cam, float)) @ GL_TO_CV
        c2w[:3, 3] *= scale
        frame = {"file_path": f"./images/{c.id}" + (".png" if k else ""), "transform_matrix": c2w.tolist(),
                 "fg_mask_path": f"masks/{c.id}.png"}
        if k >= 2:  # per-frame intrinsics override the global ones
            Kc = np.asarray(c.K, float)
            frame.update(fl_x=Kc[0, 0], fl_y=Kc[1, 1], cx=Kc[0, 2], cy=Kc[1, 2])
        meta["frames"].append(frame)
        (src / "images" / f"{c.id}.png").write_bytes(encode_png(images[c.id]))
        (src / "masks" / f"{c.id}.png").write_bytes(encode_png(masks[c.id]))
    (src / "transforms.json").write_text(json.dumps(meta))
    return meta


def test_transforms_json_in_millimetres_imports_to_the_original_cameras(tmp_path):
    cams, images, masks = original(tmp_path)
    write_transforms(tmp_path / "nerf", cams, images, masks, scale=1000.0)
    capture, units, _ = import_capture("nerf", tmp_path / "nerf" / "transforms.json", tmp_path / "out")
    assert units == "mm"  # detected from the rig's size (cameras 0.8 m from the head)
    assert_same(capture, cams, images, masks)


@pytest.mark.parametrize("case, field", [("rigid", "frames[1].transform_matrix"), ("focal", "frames[0].fl_x"),
                                         ("model", "camera_model")])
def test_transforms_json_malformed_is_rejected_by_field(tmp_path, case, field):
    cams, images, masks = original(tmp_path)
    meta = write_transforms(tmp_path / "nerf", cams, images, masks)
    if case == "rigid":
        scaled = np.diag([2.0, 1, 1, 1]) @ meta["frames"][1]["transform_matrix"]  # not a rotation any more
        meta["frames"][1]["transform_matrix"] = scaled.tolist()
    elif case == "focal":
        del meta["camera_angle_x"]
    else:
        meta["camera_model"] = "OPENCV_FISHEYE"
    (tmp_path / "nerf" / "transforms.json").write_text(json.dumps(meta))
    assert_rejected(tmp_path, "nerf", tmp_path / "nerf", "transforms.json", field)


# --------------------------------------------------------------------------------------------------- NeRSemble
SERIALS = ["222200042", "222200044", "220700191", "221501007"]


def write_nersemble(root, cams, images, masks, videos=False):
    """A v1 participant (frame folders, images-2x, alpha maps) or a v2 one (calibration/, per-camera mp4s)."""
    K_full = np.asarray(cams[0].K, float).copy()
    K_full[:2] *= 100  # 22 x 32 images: the 2200 x 3208 sensor downscaled by 100
    calib = root / ("calibration" if videos else "") / "camera_params.json"
    calib.parent.mkdir(parents=True, exist_ok=True)
    calib.write_text(json.dumps({"world_2_cam": {s: np.asarray(c.world_to_cam, float).tolist()
                                                 for s, c in zip(SERIALS, cams)}, "intrinsics": K_full.tolist()}))
    seq = root / "sequences" / "EMO-1-shout+laugh"
    if videos:
        import imageio.v2 as imageio

        (seq / "images").mkdir(parents=True)
        for s, c in zip(SERIALS, cams):
            with imageio.get_writer(str(seq / "images" / f"cam_{s}.mp4"), fps=24, codec="libx264",
                                    macro_block_size=2, quality=10) as wr:
                for t in range(3):
                    wr.append_data(np.full((c.height, c.width, 3), 40 + 70 * t, np.uint8))
        return seq
    frame = seq / "frame_00003"
    for folder, data in (("images-2x", images), ("alpha_map", masks)):
        (frame / folder).mkdir(parents=True)
        for s, c in zip(SERIALS, cams):
            (frame / folder / f"cam_{s}.png").write_bytes(encode_png(data[c.id]))
    return seq


def test_nersemble_frame_folder_imports_to_the_original_cameras(tmp_path):
    cams, images, masks = original(tmp_path, 22, 32)
    seq = write_nersemble(tmp_path / "018", cams, images, masks)
    capture, units, _ = import_capture("nersemble", seq, tmp_path / "out", frame="3")
    assert units == "m"
    renamed = {f"cam_{s}": images[c.id] for s, c in zip(SERIALS, cams)}
    renamed_masks = {f"cam_{s}": masks[c.id] for s, c in zip(SERIALS, cams)}
    assert_same(capture, [dataclasses.replace(c, id=f"cam_{s}") for s, c in zip(SERIALS, cams)], renamed,
                renamed_masks)


def test_nersemble_videos_give_the_chosen_frame(tmp_path):
    cams, images, _ = original(tmp_path, 22, 32)
    seq = write_nersemble(tmp_path / "240", cams, images, None, videos=True)
    capture, _, _ = import_capture("nersemble", seq, tmp_path / "out", frame="2")
    assert capture.mask_files is None and len(capture.cameras) == 4
    for c in capture.cameras:
        img = decode_image(capture.image_files[c.id].read_bytes()).astype(float)
        assert abs(img.mean() - 180) < 6  # frame 2 of 40, 110, 180 (H.264 is lossy)


@pytest.mark.parametrize("case, file, field", [("no_image", "camera_params.json", "world_2_cam[221501007]"),
                                               ("rigid", "camera_params.json", "world_2_cam[222200044]"),
                                               ("frame", "frame_00007", "--frame")])
def test_nersemble_malformed_is_rejected_by_file_and_field(tmp_path, case, file, field):
    cams, images, masks = original(tmp_path, 22, 32)
    seq = write_nersemble(tmp_path / "018", cams, images, masks)
    if case == "no_image":
        (seq / "frame_00003" / "images-2x" / "cam_221501007.png").unlink()
    elif case == "rigid":
        calib = tmp_path / "018" / "camera_params.json"
        params = json.loads(calib.read_text())
        params["world_2_cam"]["222200044"][0][0] = 3.0
        calib.write_text(json.dumps(params))
    assert_rejected(tmp_path, "nersemble", seq, file, field, frame="7" if case == "frame" else "3")


def test_a_source_the_validator_rejects_leaves_no_out(tmp_path):
    cams, images, masks = original(tmp_path, 22, 32)
    seq = write_nersemble(tmp_path / "018", cams, images, masks)
    calib = tmp_path / "018" / "camera_params.json"
    params = json.loads(calib.read_text())
    params["intrinsics"][0][1] = 50.0  # skew: passes the reader, fails the capture validator
    calib.write_text(json.dumps(params))
    assert_rejected(tmp_path, "nersemble", seq, "cameras.json", "K", frame="3")


# ----------------------------------------------------------------------------------------------------- Ava-256
def write_ava(capture_dir, cams, images, frames=(100, 101)):
    """decoder/: camera_calibration.json (K and T transposed, mm, integer pixel centres at full size),
    frame_list.csv, image/cam<id>.zip of PNGs for three cameras and an unzipped AVIF folder for the last."""
    base = capture_dir / "decoder"
    (base / "image").mkdir(parents=True)
    krt = []
    for k, c in enumerate(cams):
        s = c.width / 2668
        K_full = np.asarray(c.K, float) / np.array([[s], [s], [1]])
        K_full[:2, 2] -= 0.5
        RT = np.asarray(c.world_to_cam, float)[:3].copy()
        RT[:, 3] *= 1000
        T = np.zeros((4, 4))
        T[:4, :3], T[3, 3] = RT.T, 1.0
        cam = f"4009{40 + k}"
        krt.append({"cameraId": cam, "projectionModel": "Pinhole", "distortionModel": "RadialAndTangential",
                    "K": K_full.T.tolist(), "distortion": [0.0] * 4, "T": T.tolist()})
        for f in frames:
            img = images[c.id] if f == frames[0] else 255 - images[c.id]
            if k < 3:
                with zipfile.ZipFile(base / "image" / f"cam{cam}.zip", "a") as z:
                    z.writestr(f"cam{cam}/{f:06d}.png", encode_png(img))
            else:
                (base / "image" / f"cam{cam}").mkdir(exist_ok=True)
                Image.fromarray(img).save(base / "image" / f"cam{cam}" / f"{f:06d}.avif", quality=100,
                                      subsampling="4:4:4")
    (base / "camera_calibration.json").write_text(json.dumps({"KRT": krt}))
    (base / "frame_list.csv").write_text("seg_id,frame_id\n" + "".join(f"EXP_neutral_peak,{f}\n" for f in frames))
    return [k["cameraId"] for k in krt]


def test_ava256_capture_imports_to_the_original_cameras(tmp_path):
    cams, images, _ = original(tmp_path, 23, 35)  # 2668 x 4096 scaled by 23 / 2668
    ids = write_ava(tmp_path / "m--20210223--1023--AVW368--GHS", cams, images)
    capture, units, undistorted = import_capture("ava256", tmp_path / "m--20210223--1023--AVW368--GHS",
                                                 tmp_path / "out")
    assert units == "mm" and undistorted == []
    renamed = [dataclasses.replace(c, id=i) for i, c in zip(ids, cams)]
    assert_same(capture, renamed, {i: images[c.id] for i, c in zip(ids, cams)}, None, lossy=ids[3:])  # AVIF


@pytest.mark.parametrize("case, file, field", [("K", "camera_calibration.json", "KRT[1].K"),
                                               ("image", "camera_calibration.json", "KRT[cameraId=400942]"),
                                               ("zip", "cam400940.zip", "data")])
def test_ava256_malformed_is_rejected_by_file_and_field(tmp_path, case, file, field):
    cams, images, _ = original(tmp_path, 23, 35)
    write_ava(tmp_path / "cap", cams, images)
    base = tmp_path / "cap" / "decoder"
    if case == "K":
        calib = json.loads((base / "camera_calibration.json").read_text())
        calib["KRT"][1]["K"] = [[1.0, 0.0], [0.0, 1.0]]
        (base / "camera_calibration.json").write_text(json.dumps(calib))
    elif case == "image":
        shutil.rmtree(base / "image" / "cam400943")
        (base / "image" / "cam400942.zip").unlink()
    else:
        (base / "image" / "cam400940.zip").write_bytes(b"not a zip")
    assert_rejected(tmp_path, "ava256", tmp_path / "cap", file, field)


# --------------------------------------------------------------------------------------------------------- CLI
def test_cli_imports_and_reports_bad_input_in_one_line(tmp_path, capsys):
    cams, images, masks = original(tmp_path)
    write_transforms(tmp_path / "nerf", cams, images, masks, scale=100.0)
    out = tmp_path / "caps" / "bob"
    assert main(["data", "import", "--from", "nerf", str(tmp_path / "nerf"), "--out", str(out),
                 "--units", "cm"]) == 0
    assert "4 cameras, units cm -> m" in capsys.readouterr().out
    assert_same(load_capture(out), cams, images, masks)
    assert main(["data", "validate", str(tmp_path / "caps")]) == 0
    assert main(["data", "import", "--from", "colmap", str(tmp_path / "nerf"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("headsup: error: file ") and "sparse model" in err and err.count("\n") == 1

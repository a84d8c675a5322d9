"""Contact sheet of a dataset: per subject a row of views and the camera frusta seen from above (x-z).

Works on a folder of capture folders or on a built TFDS dataset folder (one with dataset_info.json).
"""
from __future__ import annotations

import io
import pathlib

import numpy as np

from headsup_jax.data.io import decode_image, write_bytes_atomic
from headsup_jax.render.types import camera_centre


def load_records(path, num_subjects: int, split: str = "train") -> list[dict]:
    """The first `num_subjects` examples (tfds_builder record layout) of a capture tree or TFDS folder."""
    from headsup_jax.data.capture import find_captures, load_capture
    from headsup_jax.data.tfds_builder import capture_example, load_source

    path = pathlib.Path(path)
    if (path / "dataset_info.json").exists():
        source = load_source(path, split)
        return [source[i] for i in range(min(num_subjects, len(source)))]
    found = find_captures(path)[:num_subjects]
    if not found:
        raise ValueError(f"{path}: neither a TFDS dataset folder nor a folder of capture folders")
    return [capture_example(load_capture(p, s, f)) for s, f, p in found]


def frustum_lines(K, world_to_cam, width: int, height: int, depth: float = 0.25) -> np.ndarray:
    """World-space segments [8, 2, 3] of a camera's frustum: centre to 4 image corners, and the far rectangle."""
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64)
    rays = corners @ np.linalg.inv(np.asarray(K, np.float64)).T * depth  # [4, 3] camera frame, z = depth
    w2c = np.asarray(world_to_cam, np.float64)
    far = (rays - w2c[:3, 3]) @ w2c[:3, :3]  # camera -> world: R^T (x - t)
    centre = camera_centre(w2c)
    return np.array([[centre, c] for c in far] + [[far[k], far[(k + 1) % 4]] for k in range(4)])


def contact_sheet(records: list[dict], views: int = 6) -> bytes:
    """PNG bytes: one row per record, `views` evenly spaced cameras, then the rig from above."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(records), views + 1, figsize=(1.6 * (views + 1), 2.1 * len(records)), squeeze=False)
    for row, rec in zip(axes, records):
        n = len(rec["images"])
        picks = np.unique(np.linspace(0, n - 1, min(views, n)).round().astype(int))
        subject = rec["subject"].decode() if isinstance(rec["subject"], bytes) else rec["subject"]
        frame = rec["frame"].decode() if isinstance(rec["frame"], bytes) else rec["frame"]
        for ax, k in zip(row, picks):
            ax.imshow(decode_image(rec["images"][k]))
            ax.set_title(rec["camera_ids"][k].decode(), fontsize=7)
        for ax in row[:views]:
            ax.axis("off")
        row[0].text(-0.1, 0.5, subject + (f"\n{frame}" if frame else ""), transform=row[0].transAxes,
                    rotation=90, ha="right", va="center", fontsize=8)
        top = row[views]
        for k in range(n):
            seg = frustum_lines(rec["K"][k], rec["world_to_cam"][k], rec["width"][k], rec["height"][k])
            for a, b in seg:
                top.plot([a[0], b[0]], [a[2], b[2]], color="tab:red" if k in picks else "0.6", lw=0.6)
        top.add_patch(plt.Circle((0, 0), 0.1, fill=False, color="k"))
        top.set_aspect("equal")
        top.set_title(f"{n} cameras, top view (x, z)", fontsize=7)
        top.tick_params(labelsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_contact_sheet(path, out, num_subjects: int = 4, views: int = 6, split: str = "train") -> None:
    write_bytes_atomic(out, contact_sheet(load_records(path, num_subjects, split), views))

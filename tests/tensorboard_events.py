"""Reads TensorBoard event files (TFRecord framing of `Event` protos) without TensorFlow, for tests."""
from __future__ import annotations

import pathlib
import struct

from tensorboardX.proto.event_pb2 import Event


def events(folder) -> list[Event]:
    """Every event of every events file under `folder`, in file order."""
    out = []
    for path in sorted(pathlib.Path(folder).rglob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            out.append(Event.FromString(data[at + 12:at + 12 + length]))  # 8 length + 4 crc, data, 4 crc
            at += 12 + length + 4
    return out


def image_steps(folder, tag: str) -> list[int]:
    """Steps at which an image summary `tag` was written."""
    return sorted(e.step for e in events(folder) for v in e.summary.value if v.tag == tag and v.HasField("image"))


def scalars(folder, tag: str) -> dict[int, float]:
    """step -> value of the scalar summary `tag`."""
    return {e.step: v.simple_value for e in events(folder) for v in e.summary.value if v.tag == tag}

"""Multi-view head data: capture format and validation, TFDS builder, Grain pipeline, synthetic subjects."""
from headsup_jax.data.capture import CameraSpec, Capture, CaptureError, Problem, check_capture, find_captures, load_capture, write_capture

__all__ = ["CameraSpec", "Capture", "CaptureError", "Problem", "check_capture", "find_captures", "load_capture",
           "write_capture"]

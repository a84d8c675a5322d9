"""Parameters and FLOPs per example of each configs/headsup.py size (XLA's cost analysis of the forward).

    python benchmarks/model_sizes.py [--sizes tiny,s,m,l,xl]
FLOPs come from the lowered (unoptimised) HLO of the model's forward for one example with the size's
number of input views and image size; the renderer is excluded (it depends on the views rendered).
"""
import argparse

import jax
import jax.numpy as jnp
from flax import nnx

from headsup_jax.train.experiment import build_model



def get_config(size):
    from headsup_jax.train.config import size_config

    return size_config(size)


def measure(size: str) -> dict:
    config = get_config(size)
    config.template = "procedural"  # G and FLOPs of the decoder follow the atlas; procedural is always there
    abstract = nnx.eval_shape(lambda: build_model(config)[0])
    graphdef, state = nnx.split(abstract)
    n, (h, w) = config.data.num_inputs, config.data.image_size
    images = jax.ShapeDtypeStruct((1, n, h, w, 3), jnp.float32)
    K = jax.ShapeDtypeStruct((1, n, 3, 3), jnp.float32)
    w2c = jax.ShapeDtypeStruct((1, n, 4, 4), jnp.float32)
    forward = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a)[0].means)
    cost = forward.lower(state, images, K, w2c).cost_analysis()
    params = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    return dict(size=size, params=params, gflops=cost["flops"] / 1e9, views=n, image=f"{h}x{w}",
                latent=f"{config.model.latent_size}^2 x {config.model.dim}", atlas=config.atlas_resolution,
                gaussians=abstract.atlas.count)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="tiny,s,m,l,xl")
    args = parser.parse_args()
    print("| size | params (M) | GFLOPs / example (forward) | input views | image | latent | atlas R | Gaussians |")
    print("|---|---:|---:|---:|---|---|---:|---:|")
    for size in args.sizes.split(","):
        r = measure(size)
        print(f"| {r['size']} | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | {r['views']} | {r['image']} | {r['latent']} "
              f"| {r['atlas']} | {r['gaussians']} |", flush=True)


if __name__ == "__main__":
    main()

"""Parameters and FLOPs per example of each configs/headsup.py size (XLA's cost analysis of the forward,
headsup_jax.scaling.cost.forward_cost; `headsup sweep plan` gives the train step's).

    python benchmarks/model_sizes.py [--sizes tiny,s,m,l,xl]
FLOPs come from the lowered (unoptimised) HLO of the model's forward for one example with the size's
number of input views and image size; the renderer is excluded (it depends on the views rendered).
"""
import argparse

from headsup_jax.scaling.cost import forward_cost
from headsup_jax.train.config import size_config


def measure(size: str) -> dict:
    config = size_config(size)
    config.template = "procedural"  # G and FLOPs of the decoder follow the atlas; procedural is always there
    cost = forward_cost(config)
    n, (h, w) = config.data.num_inputs, config.data.image_size
    return dict(size=size, params=cost["params"], gflops=cost["flops_per_example"] / 1e9, views=n, image=f"{h}x{w}",
                latent=f"{config.model.latent_size}^2 x {config.model.dim}", atlas=config.atlas_resolution,
                gaussians=cost["gaussians"])


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

"""The latent expression model (issue 13), big_vision style: `--config configs/expression.py:tiny`.

    headsup train --config configs/expression.py:tiny --config.base=runs/tiny --workdir runs/expr

`base` is a trained HeadsUp run (frozen: it encodes each frame and decodes the predicted latents);
`data.source` a folder of synthetic subjects with expression frames (`headsup data synth --frames F`):
<source>/<subject>/frame_00 neutral, frame_01... expressions, each with its blendshapes.json.
"""
import ml_collections

SIZES = {"tiny": dict(width=64, depth=2, heads=4, steps=300)}  # width/depth/heads of the transformer


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    s = SIZES.get(arg or "tiny")
    if s is None:
        raise ValueError(f"unknown size {arg!r}; choose one of {sorted(SIZES)}")
    c = ml_collections.ConfigDict()
    c.kind = "expression"  # `headsup train` trains the expression model for configs with this kind
    c.size = arg or "tiny"
    c.seed = 0
    c.base = ""  # workdir of the trained HeadsUp run (required)
    c.model = dict(width=s["width"], depth=s["depth"], heads=s["heads"], mlp_ratio=4)
    c.data = dict(
        source="",  # folder of subjects with frame_00 (neutral), frame_01, ... (required)
        num_inputs=0,  # views the base model encodes each frame from (0: the base config's data.num_inputs)
        num_targets=2,  # other views of the expression frame the render loss compares against
        batch_size=4,  # (subject, frame) pairs a step; frame 0 pairs itself with zero coefficients
    )
    # latent: mean squared error to the base model's encoding of the expression frame's views;
    # render: L1 of the decoded Gaussians in the expression frame's target views against its images
    # (composited on `background` by their masks, as the base objective does)
    c.loss = dict(latent=1.0, render=1.0, background=(1.0, 1.0, 1.0))
    c.optim = dict(name="adam", lr=1e-3, warmup_steps=10, total_steps=s["steps"], b1=0.9, b2=0.99,
                   weight_decay=0.0, clip_norm=1.0, grad_accum=1)
    c.checkpoint = dict(every=100, keep=2)
    c.log = dict(every=10)
    return c

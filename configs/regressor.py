"""The blendshape regressor (issue 13, driving from images), big_vision style: `--config configs/regressor.py:tiny`.

    headsup data synth --out synth_expr --subjects 200 --frames 4 --resolution 64
    headsup train --config configs/regressor.py:tiny --config.data.source=synth_expr --workdir runs/regressor

`data.source`: a folder of subjects with expression frames (<subject>/frame_00, frame_01, ... each with
its blendshapes.json, the coefficients the regressor learns); whole subjects are held out for the test
split (`data.test`), on which the run reports its coefficient error (workdir/heldout_error.json).
`template`: the template whose expression blendshapes are the outputs (that of the heads it will drive).
"""
import ml_collections

SIZES = {"tiny": dict(widths=(16, 32, 64, 64), hidden=128, steps=1500)}  # CNN widths (each conv stride 2)


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    s = SIZES.get(arg or "tiny")
    if s is None:
        raise ValueError(f"unknown size {arg!r}; choose one of {sorted(SIZES)}")
    c = ml_collections.ConfigDict()
    c.kind = "regressor"  # `headsup train` trains the blendshape regressor for configs with this kind
    c.size = arg or "tiny"
    c.seed = 0
    c.template = "procedural"  # a template spec (as `headsup data synth --template`): its expression names
    c.model = dict(widths=s["widths"], hidden=s["hidden"], cameras=True)  # cameras: embed each view's direction
    c.data = dict(
        source="",  # folder of subjects with expression frames (required)
        num_views=4,  # input views of a frame, spread over the rig from the most frontal (infer.reconstruct.pick_views)
        image_size=(64, 48),  # (H, W) each view is resized to
        face_crop=1.1,  # > 0: each view cropped to the template's face box, its height times this; 0: whole frames
        test=0.1,  # fraction of the subjects held out (whole identities), seeded by split_seed
        split_seed=0,
        batch_size=32,  # frames a step
        augment=dict(shift=3, gain=0.2),  # train views: random shifts up to `shift` px, channel gains 1 +- gain
    )
    c.loss = "mse"  # "mse" or "l1" on the coefficients
    c.optim = dict(name="adam", lr=1e-3, warmup_steps=50, total_steps=s["steps"], b1=0.9, b2=0.999,
                   weight_decay=0.0, clip_norm=1.0, grad_accum=1)
    c.checkpoint = dict(every=500, keep=2)
    c.log = dict(every=50)
    return c

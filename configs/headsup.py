"""HeadsUp reconstruction, big_vision style: `--config configs/headsup.py:SIZE`, SIZE in tiny|quality|s|m|l|xl.

tiny trains on a 2-core CPU in minutes; quality is the CPU recipe of tiny at 128 x 96 with 8 input views
(`headsup train --config configs/headsup.py:quality`: 5,500 steps, about 80 minutes on 2 cores, README
"Fidelity"); xl is the paper's scale (64 x 64 x 512 latent, stage 1 at half resolution with 10 input
views, batch 64, bfloat16). Unknowns of the paper (block counts, UV resolution, loss weights) are values
here, not constants in the code.
"""
import ml_collections

CPU_SIZES = ("tiny", "quality")  # float32, pixel-aligned queries, texel head, lr 1e-3: the recipe of README "Fidelity"
SIZES = {
    #       image (H, W), views, dim, latent, depth, heads, atlas R, encoder widths, decoder widths, batch,
    #       tile capacity (Gaussians in one 16 x 16 px tile's list; 0: the renderer's default, min(G, 2048))
    "tiny": dict(image=(64, 48), views=4, dim=64, latent=16, depth=2, heads=4, atlas=64,
                 enc=(16, 32), dec=(64, 48, 32), batch=4, tiles=0),
    "quality": dict(image=(128, 96), views=8, dim=64, latent=16, depth=2, heads=4, atlas=64,
                    enc=(16, 32, 48), dec=(64, 48, 32), batch=4, tiles=0),
    "s": dict(image=(128, 96), views=6, dim=256, latent=16, depth=4, heads=4, atlas=128,
              enc=(32, 64, 128), dec=(256, 128, 64, 32), batch=8, tiles=4096),
    "m": dict(image=(256, 192), views=8, dim=384, latent=32, depth=6, heads=6, atlas=256,
              enc=(64, 128, 256, 384), dec=(384, 192, 96, 48), batch=16, tiles=6144),
    "l": dict(image=(384, 288), views=10, dim=512, latent=64, depth=8, heads=8, atlas=256,
              enc=(64, 128, 256, 512), dec=(512, 256, 128), batch=32, tiles=6144),
    "xl": dict(image=(512, 384), views=10, dim=512, latent=64, depth=12, heads=8, atlas=512,
               enc=(64, 128, 256, 512), dec=(512, 256, 128, 64), batch=64, tiles=12288),
}


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    size = arg or "tiny"
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(SIZES)}")
    s = SIZES[size]
    cpu = size in CPU_SIZES
    c = ml_collections.ConfigDict()
    c.size = size
    c.seed = 0
    c.compute_dtype = "float32" if cpu else "bfloat16"  # parameters stay float32
    c.template = "auto"  # "auto": the ICT-FaceKit archive when present, else the built-in procedural head
    c.template_landmarks = ""  # JSON list of 68 vertex indices, for templates without (FLAME, OBJ): eye/mouth losses
    c.atlas_resolution = s["atlas"]

    c.model = dict(dim=s["dim"], latent_size=s["latent"], depth=s["depth"], heads=s["heads"], mlp_ratio=4,
                   self_attention=True, remat=size in ("l", "xl"), scan_layers=size in ("l", "xl"),
                   encoder_widths=s["enc"], encoder_blocks=1 if cpu else 2,
                   decoder_widths=s["dec"], decoder_blocks=1 if cpu else 2,
                   offset_scale=0.01,  # metres per unit of raw offset
                   # cross-attention bias -g |query's template point - token's ray|^2 (README), with
                   # per-head g = 1 / (2 sigma^2) at init, sigma spread over ray_sigmas (metres)
                   ray_bias=True, ray_sigmas=(0.02, 0.16),
                   # queries start from the views' colours at samples x samples points of their UV cell and
                   # the mean encoder feature there (model/pixel_aligned.py)
                   pixel_aligned=dict(enabled=cpu, samples=4),
                   # the decoder also maps each latent cell linearly to its texels' attributes (model/decoder.py)
                   texel_head=cpu)
    c.background = dict(enabled=False, num_gaussians=4096, radius=3.0, code_dim=32, width=64)

    c.data = dict(
        source="synthetic",  # "synthetic" (generated on first use into workdir/data) or a built TFDS dataset
        synthetic_subjects=1000 if cpu else 10000,
        max_train_subjects=0,  # > 0: train on the first K records of the train split only (identity sweeps)
        rig="frontal16",
        image_size=s["image"],  # (H, W) of the model's inputs and targets
        num_inputs=s["views"],
        num_targets=2 if cpu else 4,
        batch_size=s["batch"],
        workers=0 if cpu else 8,  # Grain decoding processes per host
        synthetic_workers=0,  # processes generating synthetic subjects (0: one per core)
        skip_bad_records=True,
    )
    # Tile capacities: ~1.5x the fullest tile of the initial Gaussians (8 orbit views of the procedural and
    # ICT heads; 7,924 at xl, whose 2048 default dropped 6.5% of pairs). The train step logs dropped_pairs.
    c.render = dict(backend="auto", tile_capacity=s["tiles"], max_pairs=0)  # 0: the renderer's defaults

    c.loss = dict(l1=1.0, dssim=0.2, mask=0.1, tv=0.01, offset=0.1, background=(1.0, 1.0, 1.0),
                  # extra L1 / D-SSIM weight where the eyes and mouth land in a view (1.0 doubles it there)
                  regions=dict(eyes=1.0, mouth=1.0),
                  lpips=0.0, lpips_weights="")  # LPIPS needs weights: `headsup lpips convert` (README)

    # The paper's 2e-4 from s up; tiny (batch 4, a few hundred steps on a CPU) uses 1e-3 (+0.6 dB held out over
    # 5e-4 at 300 steps, README "Fidelity").
    c.optim = dict(name="adam", lr=1e-3 if cpu else 2e-4, warmup_steps=50 if cpu else 2000,
                   total_steps={"tiny": 2000, "quality": 5500}.get(size, 900_000), b1=0.9, b2=0.99, weight_decay=0.0,
                   clip_norm=1.0, grad_accum=1)

    # -1: all remaining devices. l and xl shard parameters and Adam moments over 8 devices (FSDP), the memory
    # plan of docs/performance.md section 4; on fewer devices pass --config.mesh.fsdp=N.
    c.mesh = dict(data=-1, fsdp=8 if size in ("l", "xl") else 1, tensor=1)
    # logical axis -> mesh axes; FSDP then shards each parameter's largest free dimension over "fsdp".
    c.sharding_rules = (("batch", ("data", "fsdp")), ("heads", "tensor"), ("mlp", "tensor"))

    c.checkpoint = dict(every=500, keep=3)
    c.log = dict(every=10, images_every=200, eval_subjects=4)
    c.on_nonfinite = "raise"  # or "skip": drop the update and count it
    return c

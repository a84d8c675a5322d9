"""Scaling sweeps, big_vision style: `--sweep configs/scaling.py:NAME[,key=value,...]`.

NAME: capacity | views | identities | capacity_views (capacity x views) | study (the small local study:
4 sizes x views 1, 2, 4, 8, plus 3 identity counts). Options: budget=step|compute, steps=S (train steps of
a step-matched run; under budget=compute, of the reference run, the middle one, whose steps x FLOPs per
example every run then matches), subjects=S (synthetic subjects of the shared dataset), batch=B.
E.g. `configs/scaling.py:capacity,budget=compute` or `configs/scaling.py:views,steps=200`.

Every run overrides configs/headsup.py:tiny with a flat dict (`model.dim` -> value, as `--config.model.dim=`
takes it). All runs of a sweep train on one shared dataset (generated once into OUT/data by `headsup sweep
run`, or `data=PATH` a built one) and are scored on the same held-out test identities; the identities
sweep varies only how many train subjects are read (data.max_train_subjects, the first K of the split).

Capacity rule, size k (k = 1, 2, 3, 4, 6, 8; k = 4 is the tiny config): transformer width dim = 16 k,
heads = dim / 16 = k, depth = 1 + k // 3 (1, 1, 2, 2, 3, 3), encoder widths (4 k, 8 k), decoder widths
(dim, 3 dim / 4, dim / 2); latent grid, atlas, image and views stay the tiny config's.
"""
import ml_collections

BASE = "configs/headsup.py:tiny"
SIZES = (1, 2, 3, 4, 6, 8)
STUDY_SIZES = (1, 2, 4, 6)
VIEWS = (1, 2, 4, 8, 16)
STUDY_VIEWS = (1, 2, 4, 8)
IDENTITIES = (64, 256, 1024, 4096, 10000)
STUDY_IDENTITIES = (16, 64, 256)
DEFAULTS = dict(budget="step", steps=300, subjects=13000, batch=4, data="")
STUDY_DEFAULTS = dict(budget="step", steps=60, subjects=320, batch=4, data="")


def size_overrides(k: int) -> dict:
    """configs/headsup.py:tiny overrides of capacity size k (the rule in the module docstring)."""
    dim = 16 * k
    return {"model.dim": dim, "model.heads": k, "model.depth": 1 + k // 3, "model.encoder_widths": (4 * k, 8 * k),
            "model.decoder_widths": (dim, 3 * dim // 4, dim // 2)}


def _parse(arg: str) -> tuple[str, dict]:
    name, *pairs = (arg or "capacity").split(",")
    options = dict(STUDY_DEFAULTS if name == "study" else DEFAULTS)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in options:
            raise ValueError(f"configs/scaling.py:{arg}: option {pair!r} is not key=value with key in {sorted(options)}")
        options[key] = value if isinstance(options[key], str) else int(value)
    if options["budget"] not in ("step", "compute"):
        raise ValueError(f"configs/scaling.py:{arg}: budget must be step or compute, not {options['budget']!r}")
    return name, options


def _grid(sizes=(4,), views=(None,), identities=(None,)) -> list:
    runs = []
    for k in sizes:
        for n in views:
            for ids in identities:
                name, o = f"k{k}", size_overrides(k)
                if n is not None:
                    name, o = f"{name}_n{n}", {**o, "data.num_inputs": n}
                if ids is not None:
                    name, o = f"{name}_id{ids}", {**o, "data.max_train_subjects": ids}
                runs.append((name, o))
    return runs


def get_config(arg: str = "capacity") -> ml_collections.ConfigDict:
    name, o = _parse(arg)
    sweeps = {  # name -> (axes {axis: values}, runs)
        "capacity": ({"params": SIZES}, _grid(sizes=SIZES)),
        "views": ({"views": VIEWS}, _grid(views=VIEWS)),
        "identities": ({"identities": IDENTITIES}, _grid(identities=IDENTITIES)),
        "capacity_views": ({"params": SIZES, "views": STUDY_VIEWS}, _grid(sizes=SIZES, views=STUDY_VIEWS)),
        "study": ({"params": STUDY_SIZES, "views": STUDY_VIEWS, "identities": STUDY_IDENTITIES},
                  _grid(sizes=STUDY_SIZES, views=STUDY_VIEWS) + _grid(sizes=(2,), identities=STUDY_IDENTITIES)),
    }
    if name not in sweeps:
        raise ValueError(f"configs/scaling.py: unknown sweep {name!r}; choose one of {sorted(sweeps)}")
    axes, runs = sweeps[name]
    c = ml_collections.ConfigDict()
    c.name = name
    c.base = BASE
    c.axes = {axis: list(values) for axis, values in axes.items()}
    c.budget = o["budget"]  # step: every run trains `steps`; compute: steps x FLOPs per example = the reference's
    c.steps = o["steps"]
    c.reference = runs[len(runs) // 2][0]  # the run that trains `steps` under budget=compute
    # the views sweep's 16 inputs + 2 disjoint targets need more than frontal16's 16 cameras
    rig = "dome80" if name == "views" else "frontal16"
    # overrides of every run, (key, value) pairs (ConfigDict keys cannot hold dots)
    c.shared = (("data.batch_size", o["batch"]), ("optim.warmup_steps", 10), ("log.images_every", 0),
                ("checkpoint.every", 100))
    c.data = dict(source=o["data"], synthetic_subjects=o["subjects"], rig=rig)  # source "": generate into OUT/data
    c.eval = dict(split="test", subjects=32, targets=4)
    c.runs = [(run, overrides) for run, overrides in runs]
    return c

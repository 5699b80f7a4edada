from __future__ import annotations

import json

from blosam_med.cli import main


def test_info_tiny_backbone(capsys):
    assert main(["info", "--backbone", "tiny", "--lora-rank", "2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["lora_modules"] == 14 and info["upper_params"] == 32 and info["lora_rank"] == 2
    assert info["trainable_params"] == info["lower_params"] + info["upper_params"]


def test_info_missing_checkpoint_is_one_line_error(capsys, tmp_path):
    assert main(["info", "--backbone", "sam_vit_b", "--checkpoint", str(tmp_path / "sam.pth")]) == 2
    err = capsys.readouterr().err
    assert "sam.pth" in err and "not found" in err and "Traceback" not in err


def test_info_list(capsys):
    assert main(["info", "--list"]) == 0
    assert {"litemedsam", "sam_vit_b", "sam_vit_h", "medsam_vit_b"} <= set(capsys.readouterr().out.split())

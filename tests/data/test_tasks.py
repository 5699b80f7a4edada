from __future__ import annotations

from pathlib import Path

import pytest

import blosam_med
from blosam_med.data import PRESET_DIR, TaskConfig, load_task, preset_names, task_preset_path


def test_shipped_presets():
    assert set(preset_names()) >= {"lung_xray", "lung_ct", "polyp", "teeth"}
    xray, ct, polyp, teeth = (load_task(n) for n in ("lung_xray", "lung_ct", "polyp", "teeth"))
    assert (xray.window, xray.channels, xray.spatial_dims, xray.label_name) == ("percentile", 1, 2, "lungs")
    assert (ct.window, ct.spatial_dims, ct.axis, ct.foreground_only) == ("lung", 3, "axial", True)
    assert ct.label_values == (1,)
    assert (polyp.window, polyp.channels) == ("rgb", 3)
    assert (teeth.window, teeth.channels, teeth.label_name) == ("percentile", 1, "teeth")
    assert {t.shots for t in (xray, ct, polyp, teeth)} == {4}
    assert xray.foreground_values is None and ct.foreground_values == (1,)


def test_presets_resolve_inside_the_package():
    assert Path(blosam_med.__file__).parent / "configs" == PRESET_DIR
    assert task_preset_path("polyp").is_file()


def test_preset_file_keeps_other_top_level_keys_for_the_bundle(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text(
        "dataset_dir: somewhere\ntask:\n  name: mine\n  window: custom\n  width: 400\n  level: 40\n"
        "  label_values: [2, 3]\n"
    )
    t = load_task(p)
    assert (t.name, t.width, t.level, t.label_values) == ("mine", 400, 40, (2, 3))
    assert TaskConfig.from_dict(t.to_dict()) == t


def test_bad_presets_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="lung_xray"):
        load_task("lung_xrays")  # the message lists the shipped presets
    p = tmp_path / "no_task.yaml"
    p.write_text("name: x\n")
    with pytest.raises(ValueError, match=r"no_task.yaml.*'task:'"):
        load_task(p)
    p.write_text("task:\n  name: x\n  windw: lung\n")
    with pytest.raises(ValueError, match=r"unknown keys \['windw'\]"):
        load_task(p)
    p.write_text("task:\n  name: x\n  window: lungs\n")
    with pytest.raises(ValueError, match="window must be one of"):
        load_task(p)


@pytest.mark.parametrize("values", ["nonzero", [], None])
def test_label_values_nonzero_forms(values):
    assert TaskConfig(name="t", label_values=values).foreground_values is None


def test_invalid_fields():
    with pytest.raises(ValueError, match="channels"):
        TaskConfig(name="t", channels=2)
    with pytest.raises(ValueError, match="0 is background"):
        TaskConfig(name="t", label_values=[0, 1])
    with pytest.raises(ValueError, match="axis"):
        TaskConfig(name="t", axis="axl")


def test_empty_below_is_opt_in_and_maps_onto_the_window():
    assert load_task("lung_ct").empty_below is None and load_task("lung_ct").empty_level is None
    ct = TaskConfig(name="ct", window="lung", spatial_dims=3, empty_below=-900)  # lung window: -1350 HU .. 150 HU
    assert ct.empty_level == pytest.approx(0.3)
    assert TaskConfig.from_dict(ct.to_dict()) == ct
    custom = TaskConfig(name="ct", window="custom", width=200, level=-1000, spatial_dims=3, empty_below=-950)
    assert custom.empty_level == pytest.approx(0.75)  # -1100 HU .. -900 HU


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"window": "lung", "spatial_dims": 2}, "spatial_dims 3"),
        ({"window": "percentile", "spatial_dims": 3}, "fixed window"),
        ({"window": "lung", "spatial_dims": 3, "empty_below": -1400}, r"outside the window's range \(-1350, 150\]"),
        ({"window": "lung", "spatial_dims": 3, "empty_below": 200}, "outside the window's range"),
    ],
)
def test_empty_below_refuses_what_it_cannot_check(fields, message):
    with pytest.raises(ValueError, match=message):
        TaskConfig(name="t", **{"empty_below": -900, **fields})


def test_threshold_is_a_probability_and_older_presets_read_as_one_half():
    task = TaskConfig(name="x", threshold=0.4)
    assert TaskConfig.from_dict(task.to_dict()) == task
    stored = {k: v for k, v in task.to_dict().items() if k != "threshold"}  # an adapter saved before the key
    assert TaskConfig.from_dict(stored).threshold == 0.5
    for bad in (0.0, 1.0, -0.2):
        with pytest.raises(ValueError, match=f"task 'x': threshold must be a probability.*got {bad}"):
            TaskConfig(name="x", threshold=bad)

import json

import pytest

from multitask_deeplab.engine.delta_m import delta_m, read_baselines, write_baselines

LOWER_IS_BETTER = {"depth.abs_rel", "depth.abs_err"}


def higher(key: str) -> bool:
    return key not in LOWER_IS_BETTER


BASELINES = {"seg": {"miou": 0.50, "pixel_acc": 0.80}, "depth": {"abs_rel": 0.20, "abs_err": 0.40}}
SELECTED = {"seg": ["miou", "pixel_acc"], "depth": ["abs_rel", "abs_err"]}


def test_delta_m_by_hand():
    metrics = {"seg.miou": 0.55, "seg.pixel_acc": 0.76, "depth.abs_rel": 0.18, "depth.abs_err": 0.50}
    # seg: +10 %, -5 %  -> mean +2.5 ; depth (lower is better): +10 %, -25 % -> mean -7.5
    assert delta_m(metrics, BASELINES, SELECTED, higher, protocol="task") == pytest.approx((2.5 - 7.5) / 2)
    assert delta_m(metrics, BASELINES, SELECTED, higher, protocol="metric") == pytest.approx((10 - 5 + 10 - 25) / 4)


def test_protocols_differ_when_tasks_have_different_metric_counts():
    metrics = {"seg.miou": 0.60, "depth.abs_rel": 0.20, "depth.abs_err": 0.40}
    selected = {"seg": ["miou"], "depth": ["abs_rel", "abs_err"]}
    assert delta_m(metrics, BASELINES, selected, higher, protocol="task") == pytest.approx(10.0)
    assert delta_m(metrics, BASELINES, selected, higher, protocol="metric") == pytest.approx(20 / 3)


def test_equal_to_baseline_is_zero():
    metrics = {f"{t}.{m}": v for t, values in BASELINES.items() for m, v in values.items()}
    assert delta_m(metrics, BASELINES, SELECTED, higher) == 0.0


def test_missing_baseline_or_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="no single-task baseline for task 'normals'"):
        delta_m({}, BASELINES, {"normals": ["mean_angle"]}, higher)
    with pytest.raises(ValueError, match="needs seg.miou"):
        delta_m({}, BASELINES, {"seg": ["miou"]}, higher)
    with pytest.raises(ValueError, match="unknown Δm protocol"):
        delta_m({"seg.miou": 0.5}, BASELINES, {"seg": ["miou"]}, higher, protocol="mean")


def test_baselines_file_round_trip(tmp_path):
    path = tmp_path / "baselines.json"
    write_baselines(path, BASELINES, split="val")
    assert json.loads(path.read_text())["split"] == "val"
    assert read_baselines(path) == BASELINES
    assert read_baselines(BASELINES) == BASELINES
    with pytest.raises(ValueError, match="cannot read baselines file"):
        read_baselines(tmp_path / "none.json")

"""Runs the benchmark in --quick mode so that it never rots; timings are reported by it, never asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_every_section_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--device", "cpu", "--out", str(out)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600,
    )
    results = json.loads(out.read_text())
    assert results["settings"]["quick"] is True
    assert results["inference"]["max_abs_difference"] <= 1e-4  # converted weights: the same function
    assert results["inference"]["batchnorm_layers"]["after folding"] == 0
    for batch in ("1", "2"):
        assert {"torchvision", "+ channels_last"} <= set(results["inference"]["batches"][batch])
    models = results["multitask"]["models"]
    assert {"two torchvision models", "shared trunk, light heads"} <= set(models)
    assert all(row["peak_mib"] > 0 and row["flops_per_image"] > 0 for row in models.values())
    assert models["shared trunk, light heads"]["flops_per_image"] < models["full ASPP depth head"]["flops_per_image"]
    for recipe in ("scenes_seg_depth.yaml", "gpu_resnet50_seg_depth_normals.yaml"):
        options = results["training"][recipe]["options"]
        assert {"baseline", "channels_last", "grad checkpointing (backbone)"} <= set(options)
        assert all(row["images_per_s"] > 0 and row["allocated_peak_mib"] > 0 for row in options.values())
    assert "shared trunk" in results["training"]["gpu_resnet50_seg_depth_normals.yaml"]["options"]
    strategies = results["weighting"]["strategies"]
    assert list(strategies)[0] == "fixed" and strategies["fixed"]["time_ratio"] == 1.0
    assert strategies["pcgrad"]["level"] == "gradient" and strategies["dwa"]["level"] == "loss"
    assert all(row["median_s"] > 0 and row["peak_mib"] > 0 for row in strategies.values())
    from multitask_deeplab.weighting import WEIGHTINGS

    assert set(WEIGHTINGS.names()) < set(strategies), "every registered strategy has a row"
    assert {"pcgrad (gradients: features)", "mgda (gradients: params)"} <= set(strategies)
    assert "moco (gradients: features)" not in strategies  # state per parameter coordinate: no features variant
    assert results["data"]["render"]["samples_per_s"] > 0
    assert set(results["accuracy"]["variants"]) == set(models) - {"two torchvision models"}
    assert results["targets"] and all(isinstance(t["met"], bool) for t in results["targets"])
    text = out.with_suffix(".md").read_text()
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## Targets"):
        assert heading in text

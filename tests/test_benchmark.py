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
    assert results["matmul"]["fp32"]["flop_per_s"] > 0
    peers = results["peers"]
    assert set(peers["groups"]) == {"seg only, DeepLabV3 (stride 8)", "seg only, DeepLabV3+ (stride 16)", "seg + depth"}
    assert {"ours", "ours fp32", "ours onnxruntime fp32", "ours onnxruntime int8"} <= set(peers["ours"])
    for group in peers["groups"].values():
        for regime in ("as shipped", "same options"):
            for batch in ("1", "2"):
                timings = group["regimes"][regime][batch]
                assert timings["best_peer"] in group["peers"] and timings["rows"][timings["best_peer"]]["ratio_to_best_peer"] == 1.0
                ours = {name for name in timings["rows"] if name.startswith("ours")}
                assert ours == ({"ours"} if regime == "as shipped" else set(peers["ours"]) - {"ours"})
    precision = results["precision"]["candidates"]
    assert set(precision) == {"torch fp32", "torch bf16", "onnxruntime fp32", "onnxruntime int8"}
    assert precision["onnxruntime fp32"]["agreement"]["seg.agreement"] > 0.999  # the same function
    assert precision["onnxruntime int8"]["agreement"]["depth.rel_difference"] > 0  # int8 rounds differently
    assert all(set(row["changes"]) == {"seg.miou", "depth.abs_rel", "depth.delta1"} for row in precision.values())
    assert isinstance(results["precision"]["auto_may_be_default"], bool)
    assert results["inference"]["max_abs_difference"] <= 1e-4  # converted weights: the same function
    assert results["inference"]["batchnorm_layers"]["after folding"] == 0
    fast = results["inference"]["fast"]  # the Predictor's defaults: + bf16 autocast where auto resolves to bf16
    assert fast in {"+ channels_last", "+ bf16 autocast"}
    assert {"torchvision", "eager", "+ fold BN", "+ channels_last", fast} <= set(results["inference"]["batches"]["1"])
    assert {"torchvision", fast} <= set(results["inference"]["batches"]["2"])
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
    assert text.index("fp32 matrix multiply") < text.index("## Headline") < text.index("## 0.")
    for heading in ("## 0.", "## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## 7.", "## Targets"):
        assert heading in text

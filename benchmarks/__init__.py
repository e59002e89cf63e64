"""The side-by-side benchmark: ``python -m benchmarks.run [--quick] [--out results.json]`` (see README.md here)."""

"""Speed/memory and quality benchmarks (`python -m benchmarks.<name>`); results in results/."""

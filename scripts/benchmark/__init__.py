"""The comparisons of scripts/bench.py: one module per row (a-e), with the timing and workloads they share."""

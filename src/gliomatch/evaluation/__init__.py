"""Evaluation: benchmarks (timing against references) and top-k preservation."""

"""How the platform is measured: the one harness (common.py), the null-cost model, the peers and
references it is compared with, and the scripts that compose them (docs/benchmarks.md)."""

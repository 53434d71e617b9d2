"""cist_bench: a Ray-based benchmark suite for knowledge distillation, centred on CIST."""

__version__ = "0.1.0"

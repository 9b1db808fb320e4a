"""Reports: per-layer summary tables, plots, the inspection of a pruned model and the pipeline report."""

from .summary import format_table, human

__all__ = ["format_table", "human"]

"""Reports: per-layer summaries, plots, and the pipeline report."""

from .summary import LayerRow, Profile, count_params, format_table, human, profile

__all__ = ["LayerRow", "Profile", "count_params", "format_table", "human", "profile"]

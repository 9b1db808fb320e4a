"""Per-layer summary tables of a :class:`prunekit.cost.Profile` (what ``prunekit summary`` prints)."""

from __future__ import annotations

from ..cost import Profile, human

__all__ = ["format_table", "human"]


def format_table(prof: Profile, only_types: tuple[str, ...] | None = None) -> str:
    """A fixed-width text table of the profile (what ``prunekit summary`` prints)."""
    head = f"{'layer':<28} {'type':<12} {'in':>6} {'out':>6} {'kernel':>6} {'groups':>6} {'params':>10} {'MACs':>12}"
    lines = [head, "-" * len(head)]
    for r in prof.rows:
        if only_types and r.type not in only_types:
            continue
        lines.append(f"{r.name:<28} {r.type:<12} {r.in_channels:>6} {r.out_channels:>6} {r.kernel:>6} "
                     f"{r.groups:>6} {r.params:>10,} {r.macs:>12,}")
    lines.append("-" * len(head))
    lines.append(f"{'total':<28} {'':<12} {'':>6} {'':>6} {'':>6} {'':>6} {prof.params:>10,} {prof.macs:>12,}")
    return "\n".join(lines)

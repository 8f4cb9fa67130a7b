"""The theory side of an experiment: the GP predictions of a margin sweep, gap statistics with
their uncertainty, the comparison report, Kendall's tau of generalization measures and
per-network diagnostics of a gap."""

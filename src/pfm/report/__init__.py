"""What a flow does to a user's own outputs, judged by the user: :func:`flow_report` (before and after, a table and a
figure: ``pfm report``), :func:`choose_strength` (how far to move: the strength dial swept with the user's judge:
``pfm apply --strength auto``), and the figures both draw (matplotlib found, or one line naming the extra)."""

from .flow_report import FlowReport, flow_report
from .strength import StrengthCurve, choose_strength

__all__ = ["flow_report", "FlowReport", "choose_strength", "StrengthCurve"]

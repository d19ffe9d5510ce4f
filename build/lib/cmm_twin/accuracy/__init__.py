"""The accuracy proof (`python -m cmm_twin.accuracy`, docs/accuracy.md): the simulator with ground truth
through a real gateway into its embedded store, compared with the truth (`metrics`, pure NumPy),
against the goals of issue 13 (`goals`), printed as a Markdown table (`report`)."""

from cmm_twin.accuracy.metrics import CellFigures, Features, cell_figures, grouped_figures, raw_verdict

__all__ = ["CellFigures", "Features", "cell_figures", "grouped_figures", "raw_verdict"]

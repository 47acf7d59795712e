"""Names of the rows that more than one experiment reports, spelled once.

- :data:`SOURCE_REFERENCE`: the flow of the library's ``fit(source="reference")`` variant, trained from the
  reference's samples (every pair's y- and y+) onto y+, so that a fresh reference sample is carried to the preferred
  marginal p1 (Theorem 1's maximizer) rather than from y- as the paper's ``source="rejected"`` does.
- :data:`UNCONDITIONAL`: a flow trained on the same pairs without their contexts, as the released code's text flow
  is (its "x k" row: ``f"{UNCONDITIONAL} x {k}"``).

The rows that choose among n reference samples are named by :func:`pfm_experiments.cost.bon_name` and
:func:`pfm_experiments.cost.select_name`.
"""

SOURCE_REFERENCE = "PFM, source = reference"
UNCONDITIONAL = "PFM, unconditional"

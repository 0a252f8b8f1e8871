"""The quality safety net: cheap-tier answers checked against a reference model. A sample of the
answers the cheap tier gives is asked again of a reference (capable) model off the hot path; the two
answers are compared with a per-category agreement score (or graded by the reference model itself),
obvious failures (empty answers, broken JSON, refusals) are caught without a second model call, and the
scores feed the per-category windows that promote a category to a dearer tier when quality drops."""

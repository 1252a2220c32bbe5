"""The evaluation agent (evaluation-requests -> evaluation-results). Being written: issue 4."""

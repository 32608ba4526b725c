"""Human-facing output: the end-of-run summary, the model report page (HTML) and its pictures."""

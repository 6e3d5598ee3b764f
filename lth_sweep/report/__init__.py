"""The report layer: what a sweep found (the local page and figures, the W&B report) and its tickets."""

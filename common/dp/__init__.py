"""Differential privacy: the mechanisms (clipping, noise, the settings both sides use) and the
accounting of what each release costs in ε (Google's dp-accounting)."""

"""Evaluation: decode task sample sets with combinations of components and score them (``bench``), grids
of such cells resumable on disk (``ablate``), and their reports and plots."""

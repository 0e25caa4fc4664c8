"""Fourier error-sensitivity heatmaps (``run.run_fourier_heatmaps``)."""

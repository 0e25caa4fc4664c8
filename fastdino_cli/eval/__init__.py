"""Evaluations on frozen teacher features: probes, ImageNet-C, Fourier heatmaps, Grad-CAM."""

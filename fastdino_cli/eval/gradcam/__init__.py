"""Grad-CAM maps of ViT backbones (``run.run_gradcam``)."""

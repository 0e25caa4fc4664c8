"""The ViT backbone, its attention backends and the projection heads (single-device code)."""

"""Every matplotlib figure fastdino draws, from stored results (compute never draws)."""

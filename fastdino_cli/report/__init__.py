"""The comparison report of run directories and the demo that produces them."""

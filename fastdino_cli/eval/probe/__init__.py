"""kNN and linear probes on frozen teacher features (``run.run_probe``)."""

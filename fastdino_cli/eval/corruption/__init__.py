"""ImageNet-C: the 19 corruptions, the image sets and the evaluation (``run.run_corrupt_eval``)."""

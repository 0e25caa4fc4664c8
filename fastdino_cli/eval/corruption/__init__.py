"""ImageNet-C: the 19 corruptions, the image sets and the evaluation (``run.corrupt_eval``)."""

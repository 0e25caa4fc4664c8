"""The pretraining loop, schedules, the frequency curriculum and FLOPs accounting."""

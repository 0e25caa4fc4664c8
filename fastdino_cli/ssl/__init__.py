"""The DINOv2 objective: losses and the student/teacher module."""

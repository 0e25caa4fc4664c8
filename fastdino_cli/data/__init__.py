"""Image folders, multi-crop views, iBOT masks and the embedded demo dataset."""

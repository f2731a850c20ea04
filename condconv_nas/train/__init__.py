"""Training a proxy: datasets on the device, the recipe, `fit`, checkpoints, isolation, stop requests."""

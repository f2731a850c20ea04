"""Networks: architecture specs, presets, conditional layers, path tuning, model builder, cost, latency."""

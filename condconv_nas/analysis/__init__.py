"""Reading stored studies: results frames, fronts, claims, calibration summaries, figures, the report."""

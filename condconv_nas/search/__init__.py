"""Running studies: study files, the space, samplers, one trial, workers, baselines, confirmation, ladders."""

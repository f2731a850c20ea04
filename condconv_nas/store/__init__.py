"""What a study stores: storages, journal checks, the trial record, stored settings, Optuna's internals."""

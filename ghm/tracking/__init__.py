"""MLflow tracking: the store (embedded SQLite, created safely by concurrent runs, or a server), one run's tracker, the code
version and MLflow's system tags, the datasets as MLflow dataset inputs, and the detector as a logged pyfunc model."""

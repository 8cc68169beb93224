"""MLflow tracking: the store (embedded SQLite, created safely by concurrent runs, or a server), one run's tracker, the code version."""

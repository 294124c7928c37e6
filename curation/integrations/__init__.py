"""Optional third-party systems (MLflow), each behind a clear "install curate[...]" error."""

"""Developer tooling: synthetic data, the offline demo, a local Label Studio. Never imported by a job."""

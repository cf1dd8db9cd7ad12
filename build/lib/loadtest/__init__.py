"""Load tests (Locust), the local Prometheus run and the Prometheus rule-file tooling."""

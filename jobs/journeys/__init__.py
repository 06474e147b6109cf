"""Journeys: multi-step programmes declared in conf/journeys.yaml, advanced nightly."""

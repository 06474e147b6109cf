"""Measurement: holdouts, the send and exposure logs, and what experiments caused."""

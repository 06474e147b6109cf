"""Customer intelligence on the lake: attributed activity, features, and the IO around the customer models."""

"""The run report: an HTML page per run date with plots of what the nightly did (see `render`)."""

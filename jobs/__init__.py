"""p13n: a retail personalization data platform on Spark, Delta Lake and Airflow."""

__version__ = "0.1.0"

"""Process-wide handles for job code: the Spark session and the lake, made once on first use."""

from __future__ import annotations

from functools import lru_cache

from p13n.config import get_settings


@lru_cache(maxsize=1)
def spark():
    from p13n.spark import get_spark

    return get_spark(get_settings())


@lru_cache(maxsize=1)
def lake():
    from p13n.lake import Lake
    from p13n.secrets import secure_zones

    secure_zones(get_settings())
    return Lake.from_settings(spark, get_settings())  # the session is made on the lake's first Spark use

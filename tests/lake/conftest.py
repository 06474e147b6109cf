"""Every lake test runs twice: on a local root, and on S3 (a moto server on loopback, marked `s3`),
where Spark's executors move the data files with pyarrow and delta-rs commits with conditional puts."""

from __future__ import annotations

import uuid

import pytest

from p13n.lake import Lake


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def lake(request, spark, settings, tmp_path):
    if request.param == "local":
        return Lake(spark, settings.lake, str(tmp_path / "lake"))
    endpoint = dict(request.getfixturevalue("s3_endpoint"))
    bucket = endpoint.pop("bucket")
    return Lake(
        spark,
        settings.lake.model_copy(update={"storage_options": endpoint}),
        f"s3://{bucket}/{uuid.uuid4().hex[:12]}/lake",
    )

"""Settings validation, secrets hygiene and plugin registration of the object-store backends."""

from __future__ import annotations

import re

import pytest
from conftest import ACCESS_KEY, SECRET_KEY
from trustflow_core.errors import InvalidInput
from trustflow_core.manager import get_plugin_manager
from trustflow_core.registry import STORAGE, backend_class, storage_for_uri

from trustflow_storage_oss.oss import OssStorage
from trustflow_storage_oss.s3 import S3Storage


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"endpoint": ""}, "endpoint"),
        ({"endpoint": "ftp://x"}, "endpoint"),
        ({"endpoint": "http://h/path"}, "only host and port"),
        ({"access_key_secret": ""}, "both"),
        ({"part_size": 1024}, "part_size"),
        ({"retries": 0}, "retries"),
        ({"type": "oss"}, "oss backend"),
        ({"type": "gcs"}, "type"),
        ({"secure": "yes"}, "secure"),
        ({"bucket": "Bad_Bucket"}, "bucket name"),
        ({"colour": "red"}, "s3 storage settings: unknown key(s) colour; known: "),
    ],
)
def test_bad_settings_are_refused(s3_settings, change, message):
    with pytest.raises(InvalidInput, match=re.escape(message)):
        S3Storage.from_settings({**s3_settings, **change})


def test_secrets_are_not_in_repr(s3_settings):
    storage = S3Storage.from_settings(s3_settings)
    assert SECRET_KEY not in repr(storage.config)
    assert ACCESS_KEY not in repr(storage.config)


def test_registered_through_the_plugin(monkeypatch):
    monkeypatch.setenv("TRUSTFLOW_LOAD_PLUGINS", "storage_oss")  # the entry point alone
    pm = get_plugin_manager()
    assert backend_class(pm, STORAGE, "s3") is S3Storage
    assert storage_for_uri(pm, "s3://bucket/key") is S3Storage
    assert backend_class(pm, STORAGE, "oss") is OssStorage
    assert storage_for_uri(pm, "oss://bucket/key") is OssStorage


def test_oss_refuses_minio_type(s3_settings):
    with pytest.raises(InvalidInput, match="s3 backend"):
        OssStorage.from_settings({**s3_settings, "type": "minio"})

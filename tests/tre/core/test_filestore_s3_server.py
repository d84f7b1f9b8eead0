"""The S3 file store against a real S3 server over HTTP: the same contract tests as the local store.

The server is moto's standalone server (``python -m moto.server``), an S3 *emulator* started as its
own process on a free loopback port; boto3 talks to it over real HTTP, with signing, XML errors and
streaming bodies, so this checks what the in-memory fake cannot (botocore's real error shapes, for
one). It is not AWS, MinIO or Ceph: behaviour those add (IAM policies, object lock, consistency
under load) is not tested here.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

# The contract tests every store passes, imported so that pytest collects them here too, where the
# ``store`` fixture below is the S3 server.
from tests.tre.core.test_filestore import (  # noqa: F401
    LIMIT,
    CountingStream,
    sha,
    test_delete_removes_file_and_reports_whether_it_existed,
    test_get_of_unknown_hash_raises_not_found,
    test_names_other_than_lowercase_sha256_are_refused,
    test_put_accepts_binary_stream,
    test_put_accepts_empty_content,
    test_put_over_size_limit_raises_clear_error,
    test_put_returns_sha256_of_plaintext_and_get_returns_content,
)
from tre.core.filestore import FileIntegrityError, FileTooLarge, S3FileStore
from tre.core.keys import InMemoryKeyProvider

pytestmark = pytest.mark.integration

boto3 = pytest.importorskip("boto3", reason="boto3 and moto[server] are in the dev extra")
botocore_config = pytest.importorskip("botocore.config")
botocore_exceptions = pytest.importorskip("botocore.exceptions")


@pytest.fixture(scope="module")
def s3_endpoint(moto_server: str) -> str:
    """The shared moto server (tests/tre/core/conftest.py) as this module's S3 endpoint."""
    return moto_server


@pytest.fixture
def client(s3_endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="eu-west-2",
        aws_access_key_id="moto-test", aws_secret_access_key="moto-test",  # noqa: S106 - the emulator's
        config=botocore_config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10),
    )


@pytest.fixture
def bucket(client: Any) -> str:
    name = f"tre-files-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    return name


@pytest.fixture
def keys() -> InMemoryKeyProvider:
    return InMemoryKeyProvider()


@pytest.fixture
def store(client: Any, bucket: str, keys: InMemoryKeyProvider) -> S3FileStore:
    return S3FileStore(client, bucket, keys, max_bytes=LIMIT, prefix="outputs")


def _objects(client: Any, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def test_s3_server_holds_only_ciphertext_under_the_prefixed_sharded_key(
    store: S3FileStore, client: Any, bucket: str
) -> None:
    content = b"release me, a table of counts"

    digest = store.put(content)

    objects = _objects(client, bucket)
    assert list(objects) == [f"outputs/{digest[:2]}/{digest[2:4]}/{digest}"]
    assert content not in objects[f"outputs/{digest[:2]}/{digest[2:4]}/{digest}"]
    assert store.get(digest) == content


def test_s3_server_put_of_stored_content_sends_nothing_again(store: S3FileStore, client: Any) -> None:
    puts: list[str] = []
    client.meta.events.register("before-call.s3.PutObject", lambda **kw: puts.append(kw["model"].name))

    store.put(b"once")
    store.put(b"once")

    assert puts == ["PutObject"]


def test_s3_server_object_changed_behind_the_store_is_refused(store: S3FileStore, client: Any, bucket: str) -> None:
    digest = store.put(b"approved output")
    [(key, body)] = _objects(client, bucket).items()
    client.put_object(Bucket=bucket, Key=key, Body=body[:-1] + bytes([body[-1] ^ 1]))

    with pytest.raises(FileIntegrityError):
        store.get(digest)


def test_s3_server_upload_over_the_limit_writes_nothing(store: S3FileStore, client: Any, bucket: str) -> None:
    stream = CountingStream()

    with pytest.raises(FileTooLarge):
        store.put(stream)

    assert _objects(client, bucket) == {}
    assert stream.read_bytes <= LIMIT + 65536


def test_s3_server_missing_bucket_is_an_error_not_a_missing_file(client: Any) -> None:
    store = S3FileStore(client, f"no-such-bucket-{uuid.uuid4().hex[:8]}", InMemoryKeyProvider(), max_bytes=LIMIT)

    with pytest.raises(botocore_exceptions.ClientError, match="NoSuchBucket"):
        store.get(sha(b"x"))
    with pytest.raises(botocore_exceptions.ClientError, match="NoSuchBucket"):
        store.put(b"x")


def test_s3_server_files_are_read_back_through_a_new_client(
    store: S3FileStore, s3_endpoint: str, bucket: str, keys: InMemoryKeyProvider
) -> None:
    digest = store.put(b"kept between processes")
    again = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="eu-west-2",
        aws_access_key_id="moto-test", aws_secret_access_key="moto-test",  # noqa: S106
    )
    reopened = S3FileStore(again, bucket, keys, max_bytes=LIMIT, prefix="outputs")

    assert reopened.get(digest) == b"kept between processes"


# -- a deployment configured for S3 ----------------------------------------------------------------


@pytest.fixture
def s3_settings(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # boto3's own credential chain, as in production (here the emulator accepts any key).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-test")
    return {"files_s3_endpoint_url": s3_endpoint, "files_s3_region": "eu-west-2", "files_s3_prefix": "tre"}


def test_an_instance_set_to_s3_keeps_files_in_the_bucket_and_backs_them_up_and_restores_them(
    tmp_path: Path, client: Any, bucket: str, s3_settings: dict[str, str]
) -> None:
    from tests.conftest import make_test_app
    from tre.core import migrate
    from tre.core.audit import iter_events
    from tre.core.backup import create_backup, restore_backup
    from tre.core.config import Settings
    from tre.core.db import make_engine
    from tre.core.filestore import file_store_for
    from tre.core.keys import default_key_provider
    from tre.models import metadata

    url = f"sqlite:///{tmp_path / 'source.sqlite'}"
    migrate.upgrade(url)
    source = make_test_app(tmp_path / "source", url, files_s3_bucket=bucket, **s3_settings)
    p = source.extensions["tre.platform"]
    assert isinstance(p.files, S3FileStore)
    digest = p.files.put(b"an approved output table\n")
    assert list(_objects(client, bucket)) == [f"tre/{digest[:2]}/{digest[2:4]}/{digest}"]
    assert not (tmp_path / "source" / "files").exists()

    archive = tmp_path / "backup.tar.gz"
    summary = create_backup(p.db.engine, metadata, tmp_path / "source", archive, files=p.files,
                            master_key_file=tmp_path / "source" / "master.key", passphrase="long backup passphrase")
    assert summary.files == 1

    # A fresh instance with its own, empty bucket.
    other = f"tre-restored-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=other, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    target_url = f"sqlite:///{tmp_path / 'target.sqlite'}"
    migrate.upgrade(target_url)
    target_settings = Settings.from_env({}, instance_path=tmp_path / "target", database_url=target_url,
                                        files_s3_bucket=other, **s3_settings)
    engine = make_engine(target_url)
    restore_backup(archive, engine, metadata, tmp_path / "target", passphrase="long backup passphrase",
                   files=file_store_for(target_settings, default_key_provider(tmp_path / "target")))
    engine.dispose()

    target = make_test_app(tmp_path / "target", target_url, files_s3_bucket=other, **s3_settings)
    tp = target.extensions["tre.platform"]
    assert tp.files.get(digest) == b"an approved output table\n"
    with tp.db.session_factory() as s:
        assert tp.audit.verify(iter_events(s)).ok
    tp.db.dispose()
    p.db.dispose()


def test_doctor_reaches_the_bucket_and_names_a_missing_one(
    tmp_path: Path, bucket: str, s3_settings: dict[str, str]
) -> None:
    from tre.core.config import Settings
    from tre.core.doctor import run_checks

    def finding(name: str) -> Any:
        settings = Settings.from_env({}, instance_path=tmp_path, files_s3_bucket=name, **s3_settings)
        return next(f for f in run_checks(settings, None) if f.check == "file store")

    reached = finding(bucket)
    missing = finding("tre-no-such-bucket")

    assert reached.ok and bucket in reached.message
    assert not missing.ok
    assert "tre-no-such-bucket" in missing.message and "cannot be reached" in missing.message

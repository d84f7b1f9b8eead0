"""Deliveries named under an S3 prefix (pseudonymisation.landing_s3), against moto's S3 emulator over
real HTTP: an object is streamed and sealed into the zone as the dataset's next version; a name that
climbs out of the prefix, an object that is not there or another bucket's object are refused, and
the refusal is audited and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from projects.kernel import ProjectError
from pseudonymisation.delivery_tasks import _landing_s3, deliveries_service
from pseudonymisation.landing import LandingError
from pseudonymisation.landing_s3 import S3Landing
from pseudonymisation.models import DatasetDelivery
from pseudonymisation.sealed import is_sealed
from tests.projects.factories import build_world
from tests.tre.core.conftest import moto_server  # noqa: F401 - the fixture, shared
from tre.core.audit import AuditEvent

from .test_deliveries import register_registry, write_delivery

boto3 = pytest.importorskip("boto3", reason="boto3 and moto[server] are in the dev extra")

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:  # noqa: F811
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "moto-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "moto-test")
    client = boto3.client("s3", endpoint_url=moto_server, region_name="eu-west-2")
    for bucket in ("landing", "elsewhere"):
        try:
            client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
    return client


@pytest.fixture
def s3_app(tmp_path: Path, database_url: str, moto_server: str, s3: Any) -> Iterator[Any]:  # noqa: F811
    from tests.conftest import make_test_app
    from tre.models import metadata

    _landing_s3.cache_clear()
    app = make_test_app(tmp_path / "instance", database_url, landing_s3_bucket="landing",
                        landing_s3_prefix="custodians/clinic", landing_s3_endpoint_url=moto_server,
                        landing_s3_region="eu-west-2")
    db = app.extensions["tre.db"]
    metadata.create_all(db.engine)
    yield app
    db.session.remove()
    db.dispose()
    _landing_s3.cache_clear()


def put(s3: Any, tmp_path: Path, key: str, rows: int, bucket: str = "landing") -> None:
    local = write_delivery(tmp_path / "made" / key.replace("/", "_"), rows)
    s3.put_object(Bucket=bucket, Key=key, Body=local.read_bytes())


def registered(app: Any, w: Any, tmp_path: Path) -> Any:
    return register_registry(app, w, write_delivery(tmp_path / "registered.csv", 60))


def test_an_object_under_the_prefix_is_sealed_into_the_zone_as_the_next_version(
    s3_app: Any, s3: Any, tmp_path: Path
) -> None:
    w = build_world(s3_app)
    ds = registered(s3_app, w, tmp_path)
    put(s3, tmp_path, "custodians/clinic/2026-12/registry.csv", 80)

    delivery = deliveries_service(s3_app.extensions["tre.platform"]).receive(w.custodian, ds.id,
                                                                            "2026-12/registry.csv")
    with s3_app.extensions["tre.db"].session_factory() as s:
        done = s.get(DatasetDelivery, delivery.id)
        assert (done.state, done.version, done.rows) == ("accepted", 1, 80)
        stored = Path(done.stored_path)
    assert is_sealed(stored) and b"LS1 4AP" not in stored.read_bytes()


@pytest.mark.parametrize("name", ["../other/registry.csv", "/custodians/clinic/x.csv", "2026-12/missing.csv"])
def test_a_name_outside_the_prefix_or_not_there_is_refused_audited_and_changes_nothing(
    s3_app: Any, s3: Any, tmp_path: Path, name: str
) -> None:
    w = build_world(s3_app)
    ds = registered(s3_app, w, tmp_path)
    put(s3, tmp_path, "custodians/other/registry.csv", 80)  # another custodian's prefix
    put(s3, tmp_path, "custodians/clinic/x.csv", 80, bucket="elsewhere")

    with pytest.raises(ProjectError):
        deliveries_service(s3_app.extensions["tre.platform"]).receive(w.custodian, ds.id, name)
    with s3_app.extensions["tre.db"].session_factory() as s:
        assert s.scalars(select(DatasetDelivery)).all() == []
        refusals = s.scalars(select(AuditEvent).where(AuditEvent.action == "dataset.delivery_receive")).all()
        assert [e.outcome for e in refusals] == ["denied"]


def test_the_landing_reads_only_its_own_bucket_and_prefix(s3: Any, tmp_path: Path) -> None:
    put(s3, tmp_path, "custodians/clinic/a.csv", 5)
    landing = S3Landing(s3, "landing", "custodians/clinic/")
    assert landing.key("a.csv") == ("custodians/clinic/a.csv", Path("a.csv"))
    with landing.open("a.csv") as body:
        assert body.read().startswith(b"record_id,")
    with pytest.raises(LandingError, match="No such file"):
        S3Landing(s3, "elsewhere", "custodians/clinic").open("a.csv")
    with pytest.raises(LandingError, match="no leading /"):
        landing.open("../clinic/a.csv")

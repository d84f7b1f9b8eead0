"""The web entry point as gunicorn's workers load it: ready before the first request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tre.core.conftest import free_port

REPO = Path(__file__).resolve().parents[2]

# A fresh interpreter importing tre.wsgi, as each gunicorn worker does.
PROBE = """
import json, sys
import tre.wsgi
celery = tre.wsgi.app.extensions["celery"]
print(json.dumps({
    "loaded": [m for m in ("kombu.transport.redis", "disclosure.checks", "disclosure.engine") if m in sys.modules],
    "broker_connections_in_use": len(celery.pool._dirty),
}))
"""


def test_web_worker_loads_what_first_requests_would_import_before_serving_without_connecting(
    tmp_path: Path,
) -> None:
    # Nothing listens on the broker's port: loading the transport must not connect (a broker that
    # is down must not stop the web process from starting; the first send connects).
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRE_")}
    env.update(TRE_INSTANCE_PATH=str(tmp_path / "instance"), TRE_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
               TRE_DATABASE_URL=f"sqlite:///{tmp_path / 'tre.sqlite'}")

    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True,  # noqa: S603
                          timeout=120, check=False)

    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "loaded": ["kombu.transport.redis", "disclosure.checks", "disclosure.engine"],
        "broker_connections_in_use": 0,
    }

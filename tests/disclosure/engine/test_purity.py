import subprocess
import sys

FORBIDDEN = ("flask", "sqlalchemy", "celery", "tre", "projects")


def test_engine_imports_no_web_database_or_control_plane_module():
    # A fresh interpreter, so modules imported by other tests cannot hide an import made by the engine.
    code = (
        "import sys, pkgutil, importlib, disclosure.engine as e\n"
        "for m in pkgutil.iter_modules(e.__path__): importlib.import_module('disclosure.engine.' + m.name)\n"
        "import disclosure.session, disclosure.compat\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(out.stdout.split())
    assert "disclosure" in loaded
    assert not loaded & set(FORBIDDEN)

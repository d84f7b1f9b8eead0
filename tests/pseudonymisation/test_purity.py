import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ["nhs_number", "tokens", "schema", "generalise", "optouts", "kanonymity", "quality", "pipeline", "partitions",
           "profiling", "proposal_cache", "linkage", "linkage_cleaning", "linkage_anchors", "linkage_clusters",
           "delivery_checks", "landing", "metadata_export", "omop", "hash_spill"]
FORBIDDEN = ["flask", "sqlalchemy", "celery", "tre", "projects"]


def test_the_library_imports_no_web_database_queue_or_control_plane_module():
    imports = "; ".join(f"import pseudonymisation.{m}" for m in MODULES)
    check = f"{imports}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))"

    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True)

    assert done.stdout.strip() == "[]"

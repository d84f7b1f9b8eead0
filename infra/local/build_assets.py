"""Copy the front-end toolkits from node_modules into the app's static folder.

Run by the setup command after ``npm ci``. The NHS logo is taken from the toolkit's own header
fixture so the page shows the real mark without it being copied into this repository.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "node_modules"
STATIC = ROOT / "tre" / "web" / "static"


def build() -> None:
    nhsuk = NODE / "nhsuk-frontend" / "dist" / "nhsuk"
    swagger = NODE / "swagger-ui-dist"
    if not nhsuk.is_dir() or not swagger.is_dir():
        sys.exit("node_modules is missing the toolkits: run `npm ci` first")
    out = STATIC / "nhsuk"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy2(nhsuk / "nhsuk-frontend.min.css", out / "nhsuk-frontend.min.css")
    shutil.copy2(nhsuk / "nhsuk-frontend.min.js", out / "nhsuk-frontend.min.js")
    shutil.copytree(nhsuk / "assets", out / "assets")
    fixtures = json.loads((nhsuk / "components" / "header" / "fixtures.json").read_text())
    html = fixtures["fixtures"][0]["html"]
    match = re.search(r"<svg class=\"nhsuk-header__logo\".*?</svg>", html, re.S)
    if match is None:
        sys.exit("could not find the NHS logo in the toolkit's header fixture")
    svg = match.group(0).replace("currentcolor", "#ffffff")
    (out / "logo.svg").write_text(svg, encoding="utf-8")

    sw_out = STATIC / "swagger"
    if sw_out.exists():
        shutil.rmtree(sw_out)
    sw_out.mkdir(parents=True)
    for name in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        shutil.copy2(swagger / name, sw_out / name)
    print(f"built front-end assets into {STATIC.relative_to(ROOT)}")


if __name__ == "__main__":
    build()

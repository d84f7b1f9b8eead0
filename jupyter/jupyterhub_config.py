"""The hub's config file: ``jupyterhub -f jupyter/jupyterhub_config.py`` (settings from TRE_HUB_* env)."""

from jupyter.hub_config import configure

configure(c)  # type: ignore[name-defined]  # noqa: F821 - JupyterHub injects `c` when it loads this file

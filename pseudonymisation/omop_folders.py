"""Register an OMOP CDM v5.4 folder of the landing folder: one dataset per table found, with the
presets of ``pseudonymisation.omop`` (roles, extract rules, key, links to person and visit) as its
confirmed schema and delivery rules, and each file delivered as the table's first delivery.

Who may: a holder of dataset.manage (it registers datasets). All names are checked before the first
is registered, so a clash changes nothing; each table is then registered in its own audited call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from projects.catalogue import Catalogue
from projects.kernel import ProjectError, ProjectsKernel
from projects.models import Dataset
from pseudonymisation import omop
from pseudonymisation.deliveries import Deliveries
from pseudonymisation.landing import LandingError, list_folder, top_folders
from tre.core.permissions import Permission, has_permission


@dataclass
class OmopFolders(ProjectsKernel):
    landing_dir: Path | None = None
    identifiable_path: Path | None = None

    def _recognised(self, s: Any, folder: str, prefix: str) -> dict[str, str]:
        """The tables found in the folder (table → file), once every dataset name they need is free."""
        if not prefix or len(prefix) > 40 or not prefix.replace("_", "").isalnum() or not prefix.isascii():
            raise ProjectError("Give a short prefix of lower-case letters, digits and underscores")
        try:
            tables = omop.recognise(list_folder(self.landing_dir, folder))
        except (LandingError, omop.OmopError) as exc:
            raise ProjectError(str(exc)) from None
        names = [f"{prefix}_{t}" for t in tables]
        taken = s.scalars(select(Dataset.name).where(Dataset.name.in_(names))).all()
        if taken:
            raise ProjectError(f"Datasets with these names are already registered: {', '.join(sorted(taken))}")
        return tables

    def folders_found(self, actor: Any) -> list[str]:
        """The folders directly inside the landing folder that hold an OMOP CDM person table, for the
        page to offer; changes nothing. Links are not followed; a folder that cannot be read is left out."""
        with self._tx():
            self._allow(has_permission(actor, Permission.DATASET_MANAGE), "dataset.register_omop", actor)
        found = []
        for folder in top_folders(self.landing_dir):
            try:
                omop.recognise(list_folder(self.landing_dir, folder))
            except (LandingError, omop.OmopError, OSError):
                continue
            found.append(folder)
        return found

    def preview_folder(self, actor: Any, folder: str, prefix: str) -> list[dict[str, Any]]:
        """What ``register_folder`` would register, changing nothing: per table its file, dataset name,
        key, links and each column's role and extract rule (the presets)."""
        prefix = (prefix or "").strip().lower()
        with self._tx() as s:
            self._allow(has_permission(actor, Permission.DATASET_MANAGE), "dataset.register_omop", actor)
            tables = self._recognised(s, folder, prefix)
        shown = []
        for table, file_name in tables.items():
            spec = omop.schema(table, f"{prefix}_{table}")
            rules = {c.name: str(c.effective_transform.kind) for c in spec.columns}
            shown.append({"table": table, "file": file_name, "dataset": f"{prefix}_{table}",
                          "key": omop.key_column(table), "links": omop.links(table, prefix),
                          "columns": [{"name": c["name"], "role": c["role"], "rule": rules.get(c["name"], "drop")}
                                      for c in omop.catalogue_columns(table)]})
        return shown

    def register_folder(self, actor: Any, folder: str, prefix: str) -> list[Dataset]:
        prefix = (prefix or "").strip().lower()
        with self._tx() as s:
            self._allow(has_permission(actor, Permission.DATASET_MANAGE), "dataset.register_omop", actor)
            tables = self._recognised(s, folder, prefix)
            self.audit.record(s, "dataset.register_omop", actor_id=getattr(actor, "id", None),
                              request_id=self.request_id, detail={"tables": list(tables)})
        catalogue = Catalogue(self.session, self.audit, request_id=self.request_id)
        deliveries = Deliveries(self.session, self.audit, request_id=self.request_id, landing_dir=self.landing_dir,
                                identifiable_path=self.identifiable_path)
        folder = folder.strip().strip("/")
        registered = []
        for table, file_name in tables.items():
            name = f"{prefix}_{table}"
            assert self.landing_dir is not None
            ds = catalogue.register_dataset(
                actor, name=name, title=f"{prefix} OMOP {table}", sensitivity="special_category",
                description=f"OMOP CDM v{omop.CDM_VERSION} table {table}, registered from the folder {folder}",
                source_kind="parquet" if file_name.lower().endswith(".parquet") else "csv",
                source_location=str(self.landing_dir / folder / file_name),
                columns=omop.catalogue_columns(table), schema_spec=omop.schema(table, name).to_dict(),
            )
            deliveries.set_rules(actor, ds.id, {"key_columns": [omop.key_column(table)],
                                                "referential": omop.links(table, prefix)})
            deliveries.receive(actor, ds.id, f"{folder}/{file_name}")
            registered.append(ds)
        return registered


__all__ = ["OmopFolders"]

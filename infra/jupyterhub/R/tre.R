# The project's extract from R, inside a workspace (ADR 0014). Attached as "tre" in every R kernel.
#
#   tre_tables()                        the extract's tables
#   tre_read("patients")                one table as a data.frame
#   tre_sql("select sex, count(*) as n from patients group by 1")
#
# Debian ships no R arrow or duckdb, so R asks the runtime's own DuckDB (jupyter/sql.py) through
# reticulate: DuckDB scans the Parquet files where they lie and only the query's result crosses into R
# (as a temporary CSV that data.table::fread reads).
# The runtime's Python is the one RETICULATE_PYTHON names (set in the kernel's spec).

.tre <- new.env(parent = emptyenv())

.tre_connection <- function() {
  if (is.null(.tre$connection)) {
    sql <- reticulate::import("jupyter.sql", convert = FALSE)
    .tre$module <- sql
    .tre$connection <- sql$connect()
  }
  .tre$connection
}

tre_tables <- function() {
  .tre_connection()
  sort(names(reticulate::py_to_r(.tre$module$extract_tables())))
}

tre_sql <- function(query) {
  # The result crosses as a CSV in the sandbox's private /tmp, read back by data.table's fread: the
  # reticulate in Debian cannot convert the runtime's pandas 3 frames, and a file keeps types simple.
  path <- tempfile(fileext = ".csv")
  on.exit(unlink(path))
  query <- sub("[;[:space:]]+$", "", query)
  .tre_connection()$execute(sprintf("copy (%s) to '%s' (header, delimiter ',')", query, path))
  as.data.frame(data.table::fread(path, na.strings = ""))
}

tre_read <- function(table) {
  if (!table %in% tre_tables()) stop("no table '", table, "' in this project's extract")
  tre_sql(sprintf('select * from "%s"', table))
}

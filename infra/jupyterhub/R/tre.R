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
  # The newline ends a trailing -- comment inside the query before the closing parenthesis.
  .tre_connection()$execute(sprintf("copy (%s\n) to '%s' (header, delimiter ',')", query, path))
  as.data.frame(data.table::fread(path, na.strings = ""))
}

tre_read <- function(table) {
  if (!table %in% tre_tables()) stop("no table '", table, "' in this project's extract")
  tre_sql(sprintf('select * from "%s"', table))
}

# Disclosure control from R: the same session (disclosure/session.py) and the same submission
# (jupyter/client.py, what tre-submit runs) as a Python notebook, called through reticulate.
#
#   t <- tre_crosstab("patients", "age_band", "sex")   # the table, checked; attr(t, "status")
#   m <- tre_model("patients", "n ~ C(sex)")            # an OLS/logit/probit, checked; cat(m)
#   tre_finalise()                                      # outputs and results.json, with verdicts
#   tre_submit("Table 1: age by sex", "cells under 10 suppressed")

.tre_session <- function() {
  if (is.null(.tre$session)) {
    .tre_connection()
    .tre$session <- reticulate::import("disclosure.session", convert = FALSE)$Session()
    .tre$frames <- list()
  }
  .tre$session
}

.tre_frame <- function(table) {
  session <- .tre_session()
  if (is.null(.tre$frames[[table]])) {
    scans <- reticulate::py_to_r(.tre$module$extract_tables())
    if (is.null(scans[[table]])) stop("no table '", table, "' in this project's extract")
    path <- sub("^read_[a-z_]+\\('([^']*)'.*$", "\\1", scans[[table]])
    path <- sub("/\\*\\*/\\*\\.parquet$", "", gsub("''", "'", path))
    if (dir.exists(path)) {
      # The session reads a folder of parts: the extract pipeline writes them in <dataset>/data/.
      folders <- unique(dirname(list.files(path, pattern = "\\.parquet$", recursive = TRUE, full.names = TRUE)))
      if (length(folders) != 1) stop("table '", table, "' is split over several folders: aggregate it with tre_sql()")
      path <- folders[[1]]
    }
    .tre$frames[[table]] <- session$read(path, table)
  }
  .tre$frames[[table]]
}

.tre_to_r <- function(frame) {
  path <- tempfile(fileext = ".csv")
  on.exit(unlink(path))
  frame$to_csv(path)
  as.data.frame(data.table::fread(path, na.strings = ""))
}

.tre_columns <- function(frame, names) {
  if (length(names) == 1) reticulate::py_get_item(frame, names) else
    reticulate::py_get_item(frame, reticulate::r_to_py(as.list(names)))
}

tre_crosstab <- function(table, rows, cols, values = NULL, aggfunc = NULL, suppress = FALSE) {
  session <- .tre_session()
  frame <- .tre_frame(table)
  session$suppress <- suppress
  args <- list(.tre_columns(frame, rows), .tre_columns(frame, cols))
  if (!is.null(values)) args$values <- reticulate::py_get_item(frame, values)
  if (!is.null(aggfunc)) args$aggfunc <- aggfunc
  result <- do.call(session$crosstab, args)
  out <- .tre_to_r(result)
  attr(out, "status") <- .tre_last_status(session)
  out
}

.tre_last_status <- function(session) {
  keys <- reticulate::py_to_r(reticulate::import_builtins(convert = FALSE)$list(session$results$keys()))
  reticulate::py_to_r(reticulate::py_get_item(session$results, keys[[length(keys)]])$status)
}

# A regression checked like the Python session's olsr/logitr/probitr (residual degrees of freedom):
# the fitted model's summary as text, its status in attr(, "status"). Formulas are statsmodels'
# (patsy): `n ~ C(sex) + age`.
tre_model <- function(table, formula, method = c("ols", "logit", "probit")) {
  method <- match.arg(method)
  session <- .tre_session()
  fitted <- session[[paste0(method, "r")]](formula, .tre_frame(table))
  out <- reticulate::py_to_r(reticulate::import_builtins(convert = FALSE)$str(fitted$summary()))
  structure(out, status = .tre_last_status(session))  # cat() it to read the table
}

tre_finalise <- function(path = file.path(Sys.getenv("TRE_OUTPUTS_DIR", "outputs"), "r-session")) {
  .tre_session()$finalise(path)
  invisible(path)
}

# `code` is the notebook or R script that made the outputs (its path): the output queue re-runs it.
tre_submit <- function(context, controls, path = file.path(Sys.getenv("TRE_OUTPUTS_DIR", "outputs"), "r-session"),
                       title = NULL, code = NULL) {
  files <- list.files(path, full.names = TRUE)
  files <- files[file_test("-f", files)]  # the outputs and results.json; not ACRO's checksums folder
  answer <- reticulate::import("jupyter.client")$submit(as.list(files), context, controls, title = title, code = code)
  answer
}

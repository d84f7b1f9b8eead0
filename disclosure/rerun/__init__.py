"""Reproducible release (issue 24, ADR 0018): the output queue re-runs the code a request was submitted
with and compares what it makes with the files sent.

``code`` checks the code that arrives with a request; ``compare`` compares a re-made file with the
submitted one (pure); ``jobs`` is the re-run job, which runs ``jupyter.rerun`` (the sandbox, a separate
process) and records the outcome per file.
"""

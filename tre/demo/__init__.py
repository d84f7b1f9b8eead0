"""Synthetic patient-level data for the demo and the benchmarks.

An edge of ``tre`` (it imports ``pseudonymisation``), so nothing in the kernel may import it. The
generator lives in ``tre.demo.synthetic``; its click group in ``tre.demo.cli``. Neither is imported
here, so that ``import tre.demo`` stays cheap for the CLI's start-up.
"""

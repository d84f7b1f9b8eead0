"""The control plane of the trusted research environment.

``tre.core`` is the kernel (imported by every domain package); ``tre.app``, ``tre.web``, ``tre.api``
and ``tre.cli`` are the edges, which import the domain packages and are imported by nothing else.
"""

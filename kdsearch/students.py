"""Moved: the student zoo is `kdsearch.models.students`. This alias keeps a plugin that imports `kdsearch.students`
(to register its own student) working for one release, with a DeprecationWarning."""

from .core.moved import alias

alias(__name__, "kdsearch.models.students")

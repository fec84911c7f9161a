"""Moved: the student zoo is `kdsearch.models.students`. This alias keeps a plugin that imports `kdsearch.students`
(to register its own student) working until kdsearch 0.2, with a DeprecationWarning; it is the same module object,
so a student registered through it is in the one registry."""

import sys
import warnings

from .models import students

warnings.warn("kdsearch.students moved to kdsearch.models.students; the old path works until kdsearch 0.2",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = students

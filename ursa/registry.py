"""The Model Registry's names that training and serving share: the aliases, and the codes
MLflow answers for a model or an alias that does not exist, or a name that already does."""

from __future__ import annotations

CHAMPION = "champion"  # the version the server loads
PREVIOUS = "previous"  # the champion before it: what rollback restores

NOT_FOUND = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})
ALREADY_EXISTS = frozenset({"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"})

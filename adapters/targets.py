"""Delivery targets: where an adapter shows a job's result, noted with the job as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from typing import Any, Self


class IntTarget:
    """Base of a target dataclass whose fields are all integers (ids and limits)."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read back what `to_json` wrote (nulls are the fields' defaults); ValueError if `data`
        is not that."""
        assert is_dataclass(cls)
        given = {key: value for key, value in data.items() if value is not None}
        valid = {field.name for field in fields(cls)}
        if not given.keys() <= valid or not all(
            isinstance(value, int) and not isinstance(value, bool) for value in given.values()
        ):
            raise ValueError(f"not a delivery target: {dict(data)!r}")
        try:
            return cls(**given)
        except TypeError:  # a required field is missing
            raise ValueError(f"not a delivery target: {dict(data)!r}") from None

    def to_json(self) -> dict[str, int | None]:
        assert is_dataclass(self)
        return asdict(self)

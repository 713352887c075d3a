"""Delivery targets: where an adapter shows a job's result, noted with the job as JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def read_target(cls: type[T], data: Mapping[str, Any]) -> T:
    """A target dataclass whose fields are all integers, read back from its JSON (nulls are the
    fields' defaults); ValueError if `data` is not one."""
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

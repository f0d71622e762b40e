"""Base class for model configs: plain dataclasses that round-trip through JSON."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, TypeVar

from rewas_rt.atomic import atomic_write_text
from rewas_rt.errors import ConfigError

T = TypeVar("T", bound="ModelConfig")


@dataclasses.dataclass
class ModelConfig:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown config fields {unknown}")
        return cls(**d)

    def to_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_json(cls: type[T], path: str | Path) -> T:
        return cls.from_dict(json.loads(Path(path).read_text()))

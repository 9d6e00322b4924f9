"""The host contract's building blocks (softudc/model/hoststate.py): the bounds every document
keeps, the field types made of them, and the base of every document (frozen, strict, closed).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, StringConstraints
from pydantic_core import PydanticCustomError

MAX_NAME = 255  # VM, host and attempt names (farm.py allows 50 for a VM; older data may be longer)
MAX_TEXT = 2000  # one error or note (gatekeepers cut theirs to this)
MAX_MESSAGES = 50  # errors or notes in one report (gatekeepers send their last five)
MAX_VMS = 4096  # entries of each VM-keyed list or map in one document
MAX_VNETS = 4096  # VNETs in one document (the manager hands out at most 4094 ids)
MAX_PEERS = 1000  # per NIC (farm.py: at most 1000 instances per farm)
MAX_WORKERS = 256  # forwarding threads named in a report

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT)]
Address = Annotated[str, StringConstraints(min_length=1, max_length=64)]  # an IPv4 address, maybe /prefix
Uri = Annotated[str, StringConstraints(min_length=1, max_length=1024)]
Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]*$", max_length=256)]
Epoch = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,5}$")]  # JSON object keys are strings
Mac = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")]
VnetId = Annotated[int, Field(gt=0, le=1 << 24)]
Positive = Annotated[int, Field(gt=0)]
# A host's capacity: far above any machine (2^16 CPUs, 4 PiB), so a report's figure stays a size.
HOST_CAPACITY_MAX = {"vcpus": 1 << 16, "memory_mib": 1 << 32}
HostVcpus = Annotated[int, Field(gt=0, le=HOST_CAPACITY_MAX["vcpus"])]
HostMemoryMib = Annotated[int, Field(gt=0, le=HOST_CAPACITY_MAX["memory_mib"])]
Count = Annotated[int, Field(ge=0)]
T = TypeVar("T")


def no_null(value: Any) -> Any:
    if value is None:
        raise PydanticCustomError("null", "null is not allowed (leave the field out)")
    return value


# A field a document may leave out (None) but not send as null: what it says is never "nothing".
Given = Annotated[T | None, BeforeValidator(no_null)]


def finite_number(value: Any) -> int | float:
    """Strict, finite, int or float kept as it came (a float field would turn 1234 into 1234.0)."""
    if type(value) not in (int, float) or not math.isfinite(value):
        raise PydanticCustomError("number_type", "expected a finite number")
    return value  # type: ignore[no-any-return]


Number = Annotated[int | float, PlainValidator(finite_number, json_schema_input_type=int | float)]


def vm_size(value: Any) -> list[int | None]:
    if type(value) is not list:
        raise PydanticCustomError("list_type", "expected a list")
    if len(value) != 2 or not all(v is None or (type(v) is int and v > 0) for v in value):
        raise PydanticCustomError("size", "expected [vCPUs, memory MiB] (positive integers or null)")
    return value


Size = Annotated[list[int | None], PlainValidator(vm_size, json_schema_input_type=list[Positive | None])]


class Document(BaseModel):
    """A document of the contract: frozen, strict and closed (an unknown field is refused)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    def as_json(self) -> dict[str, Any]:
        """The document as it goes on the wire: the fields that were set, nothing else."""
        return self.model_dump(mode="json", exclude_unset=True)

"""What every config section shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: frozen; unknown keys and non-finite numbers (`.inf`, `.nan`) are errors, not
    silently accepted (an infinite learning rate or timeout validates against every bound but `lt`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

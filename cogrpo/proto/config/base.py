"""What every config section shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_STEPS = 256  # decoding steps of any sampler
SEED_LIMIT = 2**32  # seeds are in [0, SEED_LIMIT): every generator and derived seed stays in range
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS)]
Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]


class Section(BaseModel):
    """Base of every config section: frozen; unknown keys and non-finite numbers (`.inf`, `.nan`) are errors, not
    silently accepted (an infinite learning rate or timeout validates against every bound but `lt`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

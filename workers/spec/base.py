"""The base of every JobSpec model (`_Strict`: unknown fields, infinities and NaN refused; frozen) and the
constants the sections share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_THRESHOLD = 100.0  # |w| < 100 zeroes every weight of any ordinary trained network: a larger threshold is a mistake


class _Strict(BaseModel):
    # allow_inf_nan=False: Infinity / NaN are refused in every float field (JSON `Infinity`, `NaN`, "inf" strings)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

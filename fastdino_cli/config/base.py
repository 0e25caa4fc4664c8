"""The base of every config section: strict, validated, finite, self-documenting."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, defaults are validated, and no
    float anywhere (fields, tuples, stages) may be inf or nan (``allow_inf_nan``): ``.inf`` is
    valid YAML and passes every ``gt=0`` bound, then trains to NaN weights or overflows.

    ``use_attribute_docstrings`` turns the docstring under each field into its description, so
    the schema is the one source of ``docs/config.md`` (``fastdino presets reference``).
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        allow_inf_nan=False,
        use_attribute_docstrings=True,
    )

"""Field types of the work routes whose OpenAPI schema says exactly what the API accepts, so a
client (and the fuzz test) can tell valid input from the document alone."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any, Union

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema
from typing_extensions import TypeAliasType

from cesar import work

#: Neither engine stores NUL (U+0000) in TEXT or JSONB.
NO_NUL = r"^[^\x00]*$"



def _unicode(value: str) -> str:
    """Refuse lone surrogates (``"\\ud800"`` is valid JSON syntax, but no UTF-8 text: the
    database driver could not send it, a 500 instead of a 422)."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be Unicode text: a lone surrogate escape (\\ud800 to "
                             "\\udfff) is not a character") from None
    return value


Text = Annotated[str, StringConstraints(pattern=NO_NUL), AfterValidator(_unicode)]

class _OnlyTheseKeys:
    """A ``dict[Text, ...]``'s schema says that its keys are Text (``patternProperties``
    alone lets a key outside the pattern through: the document would call valid what the API
    refuses)."""

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> Any:
        schema = handler(core_schema)
        if "patternProperties" in schema:
            schema["additionalProperties"] = False
        return schema


#: JSON with no NUL character in any string or key.
JsonValue = TypeAliasType(  # type: ignore[misc]
    "JsonValue",
    Union[Text, int, Annotated[float, Field(allow_inf_nan=False)], bool, None,  # noqa: UP007
          list["JsonValue"], Annotated[dict[Text, "JsonValue"], _OnlyTheseKeys()]],
)


def _storable(value: dict[str, Any]) -> dict[str, Any]:
    problem = work.json_problem(value)
    if problem:
        raise ValueError(problem)
    return value


#: A free JSON object (at most 64 KiB encoded).
Payload = Annotated[dict[Text, JsonValue], AfterValidator(_storable), _OnlyTheseKeys()]

_COST_TEXT = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6})?$")
MAX_COST = Decimal("999999.999999")
_MICRO = Decimal("0.000001")


def _cost(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, int | float):
        try:
            amount = Decimal(str(value)).quantize(_MICRO, rounding=ROUND_HALF_EVEN)
        except InvalidOperation:
            raise ValueError("must be a finite number") from None
        if not 0 <= amount <= MAX_COST:
            raise ValueError(f"must be between 0 and {MAX_COST}")
        return amount
    if isinstance(value, str) and _COST_TEXT.match(value):
        return Decimal(value)
    raise ValueError("must be a number from 0 to 999999.999999 or a string like \"0.0125\" "
                     "(at most 6 decimals)")


#: US dollars: a number (rounded to 6 decimals) or a decimal string (at most 6 decimals).
Cost = Annotated[Decimal, BeforeValidator(_cost), WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "maximum": 999999.999999},
              {"type": "string", "pattern": _COST_TEXT.pattern}],
    "description": "US dollars: a number (rounded to 6 decimals) or a decimal string with at "
                   "most 6 decimals, e.g. \"0.0125\".",
})]

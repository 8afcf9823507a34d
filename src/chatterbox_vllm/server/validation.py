"""400 messages for requests that fail validation: which field is at fault and what it accepts.

Pydantic's own wording ("Input should be less than or equal to 4") names one bound and not the field; a client
fixing its request wants both: "speed must be a number between 0.25 and 4; got 9". The rules for the speech
request's fields are read from its schema, so a changed limit changes the message with it.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Sequence

from pydantic import BaseModel

from .schemas import JobRequest, SpeechRequest

# Fields whose rule is not a range or a list of values, and the voice upload's form fields.
DESCRIBED_FIELDS: dict[str, str] = {
    "model": "a model name such as tts-1 (GET /v1/models lists them)",
    "input": "the text to speak, a non-empty string",
    "voice": 'a voice name such as "alloy", or {"id": "alloy"} (GET /v1/audio/voices lists them)',
    "instructions": "a string (Chatterbox accepts it and ignores it)",
    "language_id": 'a language code such as "fr" (GET /v1/audio/languages lists them)',
    "name": "the voice's name: 1-64 letters, digits, spaces, '_', '.' or '-'",
    "audio_sample": "an audio file of one speaker, 1-60 s long (WAV, MP3, FLAC or OGG)",
    "consent": '"yes", confirming that the speaker agreed to having their voice cloned',
}
EXAMPLE_BODY = '{"model": "tts-1", "input": "Hello!", "voice": "alloy"}'
_LOCATIONS = ("body", "query", "path", "form", "header")
_BODY_NOT_AN_OBJECT = {"model_type", "model_attributes_type", "dict_type"}
_SHOWN_CHARS = 60


def _number(value: float, whole: bool) -> str:
    return str(int(value)) if whole else f"{value:g}"


def _range_rule(annotation: object, metadata: Sequence[object]) -> str | None:
    """'a number between 0.25 and 4' from a field's bounds, or None when it has none."""
    kinds = set(typing.get_args(annotation)) or {annotation}
    whole = int in kinds and float not in kinds
    low = high = None
    low_open = False
    for item in metadata:  # pydantic's Field(ge=..., gt=..., le=...) constraints (annotated_types)
        ge, gt, le = (getattr(item, name, None) for name in ("ge", "gt", "le"))
        if ge is not None:
            low = ge
        elif gt is not None:
            low, low_open = gt, True
        elif le is not None:
            high = le
    if low is None or high is None:
        return None
    what = "a whole number" if whole else "a number"
    if low_open:
        return f"{what} above {_number(low, whole)} and at most {_number(high, whole)}"
    return f"{what} between {_number(low, whole)} and {_number(high, whole)}"


def field_rules(model: type[BaseModel]) -> dict[str, str]:
    """Each field of `model` with a range or a fixed set of values, and what it accepts, in words."""
    rules: dict[str, str] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            rules[name] = "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
        elif (rule := _range_rule(annotation, field.metadata)) is not None:
            rules[name] = rule
    return rules


RULES: dict[str, str] = {**field_rules(SpeechRequest), **DESCRIBED_FIELDS}
# A long-form job's fields (POST /v1/audio/speech/jobs): its formats include m4b, and a file may replace `input`.
JOB_RULES: dict[str, str] = {**RULES, **field_rules(JobRequest), "file": "a .txt, .md or .epub file"}


def _shown(value: object) -> str:
    """The value sent, as JSON and short; escaped where it holds what UTF-8 cannot carry (lone surrogates)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _field(location: Sequence[object]) -> str | None:
    """The request field an error's location names: ('body', 'voice', 'str') -> 'voice'."""
    parts = [part for part in location if part not in _LOCATIONS]
    return str(parts[0]) if parts and isinstance(parts[0], str) else None


def describe_validation(errors: Sequence[dict], rules: dict[str, str] = RULES) -> tuple[str, str | None, str]:
    """(message, param, code) for a request's validation errors: the first field at fault, with its rule; the
    other fields at fault are named after it. `rules`: what each field accepts (a speech request's by default)."""
    if not errors:
        return "the request is invalid", None, "invalid_request"
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"the request body is not valid JSON; send a JSON object such as {EXAMPLE_BODY}", None, "invalid_json"
    param = _field(first.get("loc", ()))
    if param is None:
        if kind == "missing":
            return f"the request has no body; send a JSON object such as {EXAMPLE_BODY}", None, "invalid_request"
        if kind in _BODY_NOT_AN_OBJECT:
            return f"the request body must be a JSON object such as {EXAMPLE_BODY}", None, "invalid_request"
        return first.get("msg", "the request is invalid"), None, "invalid_request"
    rule = rules.get(param)
    if kind == "missing":
        message = f"missing required parameter '{param}'" + (f": {rule}" if rule else "")
        code = "missing_required_parameter"
    elif rule:
        message = f"{param} must be {rule}; got {_shown(first.get('input'))}"
        code = "invalid_value"
    else:
        message = f"invalid value for '{param}': {first.get('msg', 'invalid')}"
        code = "invalid_value"
    others = list(dict.fromkeys(f for f in (_field(e.get("loc", ())) for e in errors[1:]) if f and f != param))
    if others:
        message += f" (also at fault: {', '.join(others)})"
    return message, param, code

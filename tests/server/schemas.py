"""A set of JSON schemas for structured-output tests: (name, what to ask for, schema).

Covers nested objects, arrays with min/max items, enums and consts, string patterns and formats
(date, email, uuid), number ranges (inclusive and exclusive), anyOf / oneOf, $ref / $defs,
optional fields and additionalProperties. Strings carry a maxLength where a small model could
otherwise ramble, so short max_tokens suffice.
"""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
WORD = {"type": "string", "maxLength": 16}


def obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema; every property required unless `required` says otherwise; no extra keys."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}


SCHEMAS: list[tuple[str, str, dict[str, Any]]] = [
    ("person", "a person with a name and an age", obj({"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}})),
    ("city", "a city and its country", obj({"city": NAME, "country": NAME})),
    ("boolean_flag", "whether the sky is blue", obj({"is_blue": {"type": "boolean"}})),
    ("color_enum", "a primary color", obj({"color": {"enum": ["red", "green", "blue"]}})),
    ("const", "the API version", obj({"version": {"const": "v1"}, "ok": {"type": "boolean"}})),
    ("integer_range", "a dice roll", obj({"roll": {"type": "integer", "minimum": 1, "maximum": 6}})),
    ("exclusive_range", "a probability", obj({"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}})),
    ("negative_range", "a winter temperature", obj({"celsius": {"type": "integer", "minimum": -40, "maximum": 0}})),
    ("number", "the price of a coffee", obj({"price": {"type": "number", "minimum": 0, "maximum": 100}})),
    ("date_format", "today's date", obj({"date": {"type": "string", "format": "date"}})),
    ("email_format", "a contact email", obj({"email": {"type": "string", "format": "email", "maxLength": 40}})),
    ("uuid_format", "a request id", obj({"id": {"type": "string", "format": "uuid"}})),
    ("date_time_format", "a meeting time", obj({"at": {"type": "string", "format": "date-time"}})),
    ("pattern_phone", "a phone number", obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}})),
    ("pattern_code", "a product code", obj({"code": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}})),
    ("string_lengths", "a short nickname", obj({"nick": {"type": "string", "minLength": 3, "maxLength": 8}})),
    ("array_min_max", "three fruits", obj({"fruits": {"type": "array", "items": WORD, "minItems": 2, "maxItems": 4}})),
    ("array_of_ints", "some lucky numbers", obj({"numbers": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 1, "maxItems": 5}})),
    ("array_of_enums", "the days of a weekend", obj({"days": {"type": "array", "items": {"enum": ["sat", "sun", "mon"]}, "minItems": 1, "maxItems": 3}})),
    ("unique_items", "two distinct colors", obj({"colors": {"type": "array", "items": {"enum": ["red", "blue", "green"]}, "minItems": 2, "maxItems": 2}})),
    ("nested_object", "a user with an address", obj({"user": obj({"name": NAME, "address": obj({"street": NAME, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})})})),
    ("array_of_objects", "two books", obj({"books": {"type": "array", "items": obj({"title": NAME, "year": {"type": "integer", "minimum": 1000, "maximum": 2100}}), "minItems": 1, "maxItems": 2}})),
    ("optional_fields", "a task, maybe with a due date", obj({"task": NAME, "due": {"type": "string", "format": "date"}, "done": {"type": "boolean"}}, required=["task"])),
    ("all_optional", "a note", obj({"title": WORD, "body": WORD}, required=[])),
    ("any_of", "an id that is a number or a code", obj({"id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9999}, {"type": "string", "pattern": "^[a-z]{4}$"}]}})),
    ("one_of_objects", "a shape", obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0, "maximum": 10}}), obj({"kind": {"const": "square"}, "side": {"type": "integer", "minimum": 1, "maximum": 10}})]}})),
    ("nullable", "a middle name, or null", obj({"middle": {"anyOf": [WORD, {"type": "null"}]}})),
    ("type_list", "a value that is text or a number", obj({"value": {"type": ["string", "integer"], "maxLength": 10, "minimum": 0, "maximum": 99}})),
    ("ref_defs", "a point", {"$defs": {"coord": {"type": "integer", "minimum": -100, "maximum": 100}}, **obj({"x": {"$ref": "#/$defs/coord"}, "y": {"$ref": "#/$defs/coord"}})}),
    ("ref_object", "a sender and a receiver", {"$defs": {"party": obj({"name": NAME})}, **obj({"from": {"$ref": "#/$defs/party"}, "to": {"$ref": "#/$defs/party"}})}),
    ("ref_array", "a list of tags", {"$defs": {"tag": {"type": "string", "pattern": "^[a-z]{1,8}$"}}, **obj({"tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "minItems": 1, "maxItems": 3}})}),
    ("ref_nested", "a small tree", {"$defs": {"leaf": obj({"label": WORD}), "node": obj({"label": WORD, "children": {"type": "array", "items": {"$ref": "#/$defs/leaf"}, "maxItems": 2}}, required=["label"])}, "$ref": "#/$defs/node"}),
    ("enum_mixed", "a status code", obj({"status": {"enum": ["ok", 404, None, True]}})),
    ("meeting_items", "a meeting's action items", obj({"items": {"type": "array", "items": obj({"owner": NAME, "action": {"type": "string", "maxLength": 40}}), "minItems": 1, "maxItems": 2}})),
    ("ticket", "a support ticket", obj({"title": {"type": "string", "maxLength": 30}, "priority": {"enum": ["low", "medium", "high"]}, "tags": {"type": "array", "items": WORD, "maxItems": 2}})),
    ("sentiment", "the sentiment of 'I love it'", obj({"label": {"enum": ["positive", "negative", "neutral"]}, "score": {"type": "number", "minimum": 0, "maximum": 1}})),
    ("chinese_text", "一个城市的名字", obj({"城市": {"type": "string", "maxLength": 10}})),
    ("additional_allowed", "a config with one extra setting", {"type": "object", "properties": {"name": WORD}, "required": ["name"], "patternProperties": {"^x_[a-z]{1,6}$": WORD}, "additionalProperties": False, "maxProperties": 2}),
    ("top_level_array", "two numbers", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 2}),
    ("top_level_enum", "yes or no", {"enum": ["yes", "no"]}),
    ("top_level_integer", "a year", {"type": "integer", "minimum": 1900, "maximum": 2100}),
    ("deep_nesting", "a company with a department and a manager", obj({"company": obj({"dept": obj({"manager": obj({"name": NAME})})})})),
    ("min_max_properties", "a map of two scores", {"type": "object", "patternProperties": {"^[a-z]{1,6}$": {"type": "integer", "minimum": 0, "maximum": 10}}, "additionalProperties": False, "minProperties": 1, "maxProperties": 2}),
    ("all_of", "a named thing with an id", {"allOf": [obj({"name": NAME, "id": {"type": "integer", "minimum": 1, "maximum": 99}})]}),
]

"""Fifty JSON schemas with a question each, for structured output (``response_format: json_schema``).

Nested objects, enums, arrays, integers and numbers with bounds, required and optional fields, booleans,
nullable values, ``anyOf`` and ``const``. Strings and arrays are bounded (``maxLength``, ``maxItems``) and objects
closed (``additionalProperties: false``) so that an answer fits a short ``max_tokens``: the suite checks that
every answer parses and validates, not how much the model writes. Used by ``tests/test_openai_embedded.py``
(every fifth case) and ``python -m bench.openai_api`` (all of them).
"""

from __future__ import annotations

from typing import Any


def text(n: int = 24) -> dict[str, Any]:
    return {"type": "string", "maxLength": n}


def integer(low: int, high: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": low, "maximum": high}


def number(low: float, high: float) -> dict[str, Any]:
    return {"type": "number", "minimum": low, "maximum": high}


def enum(*values: Any) -> dict[str, Any]:
    return {"enum": list(values)}


def array(items: dict[str, Any], most: int = 3, least: int = 0) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": least, "maxItems": most}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": {**required, **(optional or {})}, "required": list(required),
            "additionalProperties": False}


def const_(value: Any) -> dict[str, Any]:
    return {"const": value}


BOOL = {"type": "boolean"}
COLOR = enum("red", "green", "blue", "yellow")
PERSON = obj({"name": text(20), "age": integer(0, 120)})
POINT = obj({"x": number(-100, 100), "y": number(-100, 100)})

CASES: list[tuple[str, dict[str, Any]]] = [
    ("Describe Paris.", obj({"city": text(), "country": text()})),
    ("Give a person.", PERSON),
    ("Name a colour.", obj({"color": COLOR})),
    ("Is water wet?", obj({"answer": BOOL})),
    ("List three fruits.", obj({"fruits": array(text(12), 3, 1)})),
    ("Rate this movie from 1 to 5.", obj({"stars": integer(1, 5), "review": text(40)})),
    ("Give a point on a plane.", POINT),
    ("Describe a book.", obj({"title": text(30), "author": PERSON, "year": integer(1400, 2030)})),
    # multipleOf bounds the digits: with a bare number SmolLM2 wrote 25.000000000000000123456789000... until
    # max_tokens ran out (the grammar allows any number of digits; nothing else in the suite needed this)
    ("Describe the weather today.", obj({"sky": enum("sunny", "cloudy", "rainy"),
                                         "temperature_c": {**number(-50, 60), "multipleOf": 0.1}})),
    ("Plan a trip.", obj({"from": text(20), "to": text(20), "days": integer(1, 30)},
                         {"budget_eur": integer(0, 100000)})),
    ("Make a shopping list.", obj({"items": array(obj({"name": text(16), "qty": integer(1, 20)}), 3, 1)})),
    ("Describe a dog.", obj({"breed": text(20), "good_boy": BOOL, "legs": integer(0, 4)})),
    ("Give a triangle.", obj({"vertices": array(POINT, 3, 3)})),
    ("What is 2 + 2?", obj({"result": integer(-1000, 1000)})),
    ("Classify this: 'I love it!'", obj({"sentiment": enum("positive", "negative", "neutral"),
                                         "confidence": number(0, 1)})),
    ("Describe a company.", obj({"name": text(20), "ceo": PERSON, "employees": integer(1, 10**6),
                                 "public": BOOL})),
    ("Give an HTTP response.", obj({"status": enum(200, 201, 400, 404, 500), "body": text(30)})),
    ("Describe a planet.", obj({"name": text(12), "moons": integer(0, 100), "rings": BOOL,
                                "type": enum("rocky", "gas giant", "ice giant")})),
    ("Give a recipe.", obj({"dish": text(20), "ingredients": array(text(15), 3, 1),
                            "minutes": integer(1, 600)})),
    ("Describe a user account.", obj({"username": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,11}$"},
                                      "admin": BOOL})),
    ("Translate 'hello' to French.", obj({"source": const_("en"), "target": const_("fr"), "text": text(20)})),
    ("Give an RGB colour.", obj({"r": integer(0, 255), "g": integer(0, 255), "b": integer(0, 255)})),
    ("Describe a car.", obj({"make": text(15), "model": text(15), "year": integer(1900, 2030),
                             "electric": BOOL})),
    ("Give two teams and a score.", obj({"home": text(15), "away": text(15),
                                         "score": array(integer(0, 20), 2, 2)})),
    ("Describe a song.", obj({"title": text(25), "artist": text(20), "genre": enum("pop", "rock", "jazz",
                                                                                   "classical", "other")})),
    ("Give a date.", obj({"year": integer(1900, 2100), "month": integer(1, 12), "day": integer(1, 31)})),
    ("Describe a family.", obj({"parents": array(PERSON, 2, 1), "children": array(PERSON, 3)})),
    ("Summarize: the cat sat on the mat.", obj({"summary": text(40), "words": integer(0, 100)})),
    ("Give a product.", obj({"sku": text(12), "price": number(0, 10000), "in_stock": BOOL},
                            {"tags": array(text(10), 3)})),
    ("Describe a building.", obj({"floors": integer(1, 200), "address": obj({"street": text(25),
                                                                             "city": text(20)})})),
    ("Give a middle name, or null.", obj({"first": text(15), "middle": {"type": ["string", "null"],
                                                                         "maxLength": 15}})),
    ("Pick a shape.", obj({"shape": {"anyOf": [obj({"kind": const_("circle"), "radius": number(0, 100)}),
                                               obj({"kind": const_("square"), "side": number(0, 100)})]}})),
    ("Describe a tree.", obj({"species": text(20), "height_m": number(0, 150), "evergreen": BOOL})),
    ("Give three numbers.", obj({"numbers": array(integer(-100, 100), 3, 3)})),
    ("Describe a language.", obj({"name": text(15), "speakers_millions": integer(0, 2000),
                                  "family": enum("Indo-European", "Sino-Tibetan", "Afro-Asiatic", "other")})),
    ("Give an event.", obj({"name": text(25), "start": obj({"hour": integer(0, 23), "minute": integer(0, 59)}),
                            "online": BOOL})),
    ("Give a to-do list.", obj({"todos": array(obj({"task": text(20), "done": BOOL}), 3, 1)})),
    ("Describe a bank transfer.", obj({"from_account": text(12), "to_account": text(12),
                                       "amount": number(0.01, 10**6), "currency": enum("EUR", "USD", "GBP")})),
    ("Describe a country.", obj({"name": text(20), "capital": text(20), "population": integer(0, 2 * 10**9),
                                 "continent": enum("Europe", "Asia", "Africa", "Americas", "Oceania")})),
    ("Grade an essay.", obj({"grade": enum("A", "B", "C", "D", "F"), "comments": array(text(30), 2)})),
    ("Give a matrix.", obj({"rows": array(array(integer(-9, 9), 2, 2), 2, 2)})),
    ("Describe a pet.", obj({"kind": enum("cat", "dog", "fish", "bird"), "name": text(12)},
                            {"age": integer(0, 40)})),
    ("Give a server config.", obj({"host": text(20), "port": integer(1, 65535), "tls": BOOL,
                                   "workers": integer(1, 64)})),
    ("Describe a meal.", obj({"course": enum("starter", "main", "dessert"), "calories": integer(0, 3000),
                              "vegetarian": BOOL})),
    ("Give a chess move.", obj({"piece": enum("king", "queen", "rook", "bishop", "knight", "pawn"),
                                "from": {"type": "string", "pattern": "^[a-h][1-8]$"},
                                "to": {"type": "string", "pattern": "^[a-h][1-8]$"}})),
    ("Describe a team.", obj({"team": text(20), "members": array(obj({"name": text(15), "role": enum(
        "lead", "dev", "design")}), 3, 1)})),
    ("Estimate a probability.", obj({"event": text(30), "p": number(0, 1)})),
    ("Describe a movie.", obj({"title": text(25), "year": integer(1890, 2030), "cast": array(text(20), 3),
                               "rating": number(0, 10)})),
    ("Give a version number.", obj({"major": integer(0, 99), "minor": integer(0, 99), "patch": integer(0, 99),
                                    "stable": BOOL})),
    ("Describe an order.", obj({"id": integer(1, 10**6), "customer": PERSON,
                                "lines": array(obj({"product": text(15), "qty": integer(1, 9),
                                                    "unit_price": number(0, 1000)}), 2, 1),
                                "status": enum("new", "paid", "shipped")})),
]

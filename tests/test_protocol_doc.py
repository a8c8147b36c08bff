"""docs/protocol.md against the wire's types (streamav/wire/messages.py), so that neither can
drift from the other: each topic's table lists exactly its type's fields, with a type column
that says what the field's type is and a meaning that says which fields are rounded and to how
many decimals; the envelope's table is `Envelope`; the control socket's table lists every
request type with exactly its arguments and its reply's fields."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

import msgspec
import pytest

from streamav.wire import messages as m

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def sections(text: str) -> dict[str, str]:
    """Heading line (without the #s) -> the text up to the next heading."""
    found: dict[str, str] = {}
    heading, lines = None, []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if not in_code and re.match(r"^#{1,4} ", line):
            if heading is not None:
                found[heading] = "\n".join(lines)
            heading, lines = line.lstrip("#").strip(), []
        else:
            lines.append(line)
    if heading is not None:
        found[heading] = "\n".join(lines)
    return found


def first_table(section: str) -> list[dict[str, str]]:
    """The section's first Markdown table, as one dict per row keyed by the header's cells."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) >= 2, "no table"
    split = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    header, body = split[0], split[2:]
    return [dict(zip(header, cells)) for cells in body]


def names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


TEXT = DOC.read_text(encoding="utf-8")
SECTIONS = sections(TEXT)


def topic_section(topic: str) -> str:
    matches = [body for heading, body in SECTIONS.items() if heading.startswith(f"`{topic}`")]
    assert len(matches) == 1, f"docs/protocol.md has {len(matches)} sections for `{topic}`"
    return matches[0]


def type_words(annotation) -> set[str]:
    """What a table's type cell must mention for a field of this type."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return type_words(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(type_words(a) for a in typing.get_args(annotation)))
    if origin in (tuple, list):
        return {"["} | set().union(*(type_words(a) for a in typing.get_args(annotation)
                                     if a is not Ellipsis))
    if origin is dict:
        return {"map"}
    if annotation is type(None):
        return {"null"}
    if annotation is msgspec.UnsetType:
        return set()  # optional presence: said in the meaning
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return {"{"}
    return {{bool: "bool", int: "int", float: "float", str: "str"}[annotation]}


def field_types(cls: type[msgspec.Struct]) -> dict[str, object]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.encode_name: hints[f.name] for f in msgspec.structs.fields(cls)}


@pytest.mark.parametrize("topic", m.TOPICS)
def test_each_topic_table_is_its_type(topic: str) -> None:
    cls = m.TOPIC_TYPES[topic]
    table = first_table(topic_section(topic))
    documented = [names(row["field"])[0] for row in table]
    fields = field_types(cls)
    assert sorted(documented) == sorted(fields), (
        f"`{topic}`: in the doc only {sorted(set(documented) - set(fields))}, "
        f"in {cls.__name__} only {sorted(set(fields) - set(documented))}")
    assert len(documented) == len(set(documented))
    for row in table:
        name = names(row["field"])[0]
        words = type_words(fields[name])
        missing = {w for w in words if w not in row["type"]}
        assert not missing, f"`{topic}`.{name}: type cell {row['type']!r} lacks {missing}"
        digits = re.search(r"rounded to (\d+) decimals", row["meaning"])
        expected = cls.DIGITS.get(name)
        assert (int(digits.group(1)) if digits else None) == expected, (
            f"`{topic}`.{name}: the doc says {digits and digits.group(0)!r}, the type rounds "
            f"to {expected} decimals")


def test_the_envelope_table_is_the_envelope_type() -> None:
    table = first_table(SECTIONS["The envelope"])
    fields = field_types(m.Envelope)
    assert [names(row["field"])[0] for row in table] == list(fields)  # in the order sent
    for row in table:
        name = names(row["field"])[0]
        assert type_words(fields[name]) <= set(re.findall(r"[a-z]+|\[|\{", row["type"]))


def test_every_topic_of_the_types_has_a_section_and_no_other_topic_does() -> None:
    documented = {match for heading in SECTIONS
                  for match in re.findall(r"^`([a-z.]+)` \(", heading)}
    assert documented == set(m.TOPICS)


def test_the_control_table_is_the_request_and_reply_types() -> None:
    table = first_table(SECTIONS["The control socket"])
    rows = {names(row["cmd"])[0]: row for row in table}
    assert set(rows) == set(m.REQUEST_TYPES)
    for cmd, request_type in m.REQUEST_TYPES.items():
        row = rows[cmd]
        assert names(row["arguments"]) == list(field_types(request_type)), cmd
        reply_fields = [n for n in field_types(m.REPLY_TYPES[request_type]) if n != "ok"]
        assert names(row["reply fields"]) == reply_fields, cmd
    error_fields = list(field_types(m.ErrorReply))
    assert error_fields == ["ok", "error"]
    assert '`{"ok": false, "error": "<one' in SECTIONS["The control socket"].replace("\n", " ")


def test_the_doc_names_the_schema_version() -> None:
    assert TEXT.splitlines()[0] == f"# The streamav wire protocol (schema {m.SCHEMA_VERSION})"
    assert f"protocol version, {m.SCHEMA_VERSION} for this document" in TEXT

"""Quoting of SQL identifiers and literals, shared by every module that builds DuckDB or DataFusion SQL."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an identifier (double quotes, inner ones doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal (single quotes, inner ones doubled; a NUL character, which DuckDB's parser takes for the
    end of the text, as `chr(0)`)."""
    if "\x00" in value:
        return "(" + " || chr(0) || ".join(quote_literal(part) for part in value.split("\x00")) + ")"
    return "'" + value.replace("'", "''") + "'"

"""Quoting of SQL identifiers and literals, shared by every module that builds DuckDB or DataFusion SQL."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an identifier (double quotes, inner ones doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote a string literal (single quotes, inner ones doubled)."""
    return "'" + value.replace("'", "''") + "'"

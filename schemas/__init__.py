"""Pyarrow contracts of the Bronze tables (see `schemas.schemas`)."""

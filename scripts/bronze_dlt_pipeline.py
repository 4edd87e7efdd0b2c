"""Load the raw files into the Bronze layer: DuckDB, the Parquet lake and its Delta mirror.

Usage: python scripts/bronze_dlt_pipeline.py [--raw DIR|URL] [--lake DIR] [--warehouse FILE] [--tables a,b] [--dry-run]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retail_bronze_source.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""Read Delta tables and Parquet with Sail (Spark Connect, no JVM); print each result as one JSON line.

Usage: python sail_read.py delta:<path or s3 URL> [parquet:<path or s3 URL>] ...
S3 settings come from the process environment only (Sail reads AWS_* variables, nothing per query).
"""

import json
import sys

from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession

server = SparkConnectServer("127.0.0.1", 0)
server.start(background=True)
host, port = server.listening_address
spark = SparkSession.builder.remote(f"sc://{host}:{port}").getOrCreate()
try:
    for argument in sys.argv[1:]:
        kind, location = argument.split(":", 1)
        frame = spark.read.format(kind).load(location)
        rows = sorted((list(row) for row in frame.collect()), key=repr)
        print(json.dumps({"location": location, "columns": frame.columns, "rows": rows}, default=str), flush=True)
finally:
    spark.stop()
    server.stop()

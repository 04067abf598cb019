"""What every benchmark here ends with: its row printed and appended to a JSONL file."""

import json
import os
from typing import Any


def emit(row: dict[str, Any], path: str) -> None:
  print(json.dumps(row), flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(row) + "\n")

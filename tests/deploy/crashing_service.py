"""A service that fails at once (exit code 3), for the stack's restart-backoff test."""

import json
import sys

if __name__ == "__main__":
    print(json.dumps({"service": "crashing", "event": "failing on purpose"}), file=sys.stderr)
    sys.exit(3)

import sys
from pathlib import Path

# the shared test helpers (nets.py) live beside the tests
sys.path.insert(0, str(Path(__file__).parent))

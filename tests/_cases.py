"""How many cases each property-based test generated, printed at the end of the run."""

from collections import Counter

CASES: Counter[str] = Counter()

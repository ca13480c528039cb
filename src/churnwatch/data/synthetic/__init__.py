"""Built-in synthetic customer event log with a known ground truth (docs/SYNTHETIC.md): `generate` it under a
`SyntheticConfig`, `write` it as parquet."""

from churnwatch.data.synthetic.config import SyntheticConfig
from churnwatch.data.synthetic.generator import generate
from churnwatch.data.synthetic.writer import write

__all__ = ["SyntheticConfig", "generate", "write"]

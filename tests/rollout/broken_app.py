"""Turn a copy of sample_app into a release that crashes when it starts (for the failed-rollout test)."""

import sys
from pathlib import Path

src = Path(sys.argv[1])
version = sys.argv[2]
pyproject = src / "pyproject.toml"
pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', f'version = "{version}"'))
init = src / "src/sampleapp/__init__.py"
init.write_text(init.read_text().replace(
    "    app = Flask(__name__)\n",
    "    raise RuntimeError('this release is broken on purpose')\n    app = Flask(__name__)\n", 1))

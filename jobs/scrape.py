"""Ray job: the scrape stage.

python jobs/scrape.py --config configs/demo.yaml [--data-root DIR]
RAY_AUTH_MODE=token ray job submit --working-dir . -- python jobs/scrape.py --config configs/demo.yaml
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works with --working-dir, no install needed

from pipeline.cli import job_main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(job_main("scrape"))

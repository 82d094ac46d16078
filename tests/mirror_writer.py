"""Writer process for the mirror tests: the run store's writer, mirrored to object storage.

``python tests/mirror_writer.py DIR URL [COUNT]`` opens (or creates) the run in DIR, mirrors
it to URL (``s3://bucket/prefix``; endpoint and credentials from the ``AWS_*`` variables) and
saves the steps of ``tests/store_writer.py`` (``s0000, s0001...``, continuing after the
highest stored), forever or until COUNT steps are stored. Then it closes the store, which
waits for the mirror, and prints ``stats {json}`` (the mirror's figures) and ``closed``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from autoscope.instruments.records import ImageRecord
from autoscope.tests.store_writer import expected_record, step_id


def main(directory: str, url: str, count: int | None) -> None:
    from autoscope.tools.mirror import mirror_store
    from autoscope.tools.store import RunStore

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    store = RunStore.open_or_create(directory, {"writer": "mirror_writer"})
    mirror = mirror_store(store, url, sync_interval_s=0.2, close_timeout_s=60, max_backoff_s=1.0)
    i = 1 + max((int(s[1:]) for s in store.completed_steps()), default=-1)
    out = sys.stdout
    while count is None or i < count:
        rec = expected_record(i)
        save = store.save_image if isinstance(rec, ImageRecord) else store.save_spectrum
        save(step_id(i), rec, index=i)
        out.write(f"saved {step_id(i)}\n")
        out.flush()
        i += 1
    store.close()
    out.write(f"stats {json.dumps(dataclasses.asdict(mirror.stats))}\nclosed\n")
    out.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else None)

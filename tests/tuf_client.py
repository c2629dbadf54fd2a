"""python-tuf's reference client (ngclient.Updater) against an update-edge node.

usage: tuf_client.py ROOT_JSON METADATA_URL TARGETS_URL TARGET_NAME WORK_DIR
Prints the downloaded file's path; exits non-zero (with python-tuf's error) otherwise.
"""

import os
import sys

from tuf.ngclient import Updater


def main() -> int:
    root, metadata_url, targets_url, name, work = sys.argv[1:6]
    meta_dir = os.path.join(work, "metadata")
    target_dir = os.path.join(work, "targets")
    os.makedirs(meta_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    with open(root, "rb") as f:
        trusted_root = f.read()
    updater = Updater(
        metadata_dir=meta_dir,
        metadata_base_url=metadata_url,
        target_base_url=targets_url,
        target_dir=target_dir,
        bootstrap=trusted_root,
    )
    updater.refresh()
    info = updater.get_targetinfo(name)
    if info is None:
        print(f"target {name} not found", file=sys.stderr)
        return 1
    path = updater.download_target(info, filepath=os.path.join(target_dir, "payload.bin"))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

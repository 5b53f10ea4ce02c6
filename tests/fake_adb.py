#!/usr/bin/env python3
"""A fake `adb` for tests: `adb -s SERIAL push|pull|shell ...` against this machine's own file system.

It re-parses its argv the way the real client does: `shell` joins every following argument with single spaces
into ONE string and the device's `sh -c` parses it (so an unquoted argument would be split or expanded: the
transport must quote); `push LOCAL REMOTE` copies into REMOTE when it is an existing folder, else to REMOTE;
`pull` likewise. The device is the serial in $FAKE_ADB_SERIAL; any other serial is "not found". Every call is
appended to $FAKE_ADB_LOG as one JSON line (the argv); $FAKE_ADB_OFFLINE names a file holding how many calls
still answer "device offline" (counted down), to exercise retries.
"""
import json
import os
import shutil
import subprocess
import sys


def _copy(source: str, target: str) -> int:
    if not os.path.exists(source):
        sys.stderr.write(f"adb: error: cannot stat '{source}': No such file or directory\n")
        return 1
    if os.path.isdir(target):
        target = os.path.join(target, os.path.basename(source.rstrip("/")))
    if os.path.isdir(source):
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)
    print(f"{source}: 1 file pushed.")
    return 0


def main(argv: list) -> int:
    if os.environ.get("FAKE_ADB_LOG"):
        with open(os.environ["FAKE_ADB_LOG"], "a") as log:
            log.write(json.dumps(argv) + "\n")
    if len(argv) < 3 or argv[0] != "-s":
        sys.stderr.write("adb: usage: adb -s SERIAL push|pull|shell ...\n")
        return 1
    serial, command, args = argv[1], argv[2], argv[3:]
    if serial != os.environ.get("FAKE_ADB_SERIAL"):
        sys.stderr.write(f"error: device '{serial}' not found\n")
        return 1
    offline = os.environ.get("FAKE_ADB_OFFLINE")
    if offline and os.path.exists(offline):
        left = int(open(offline).read() or 0)
        if left > 0:
            open(offline, "w").write(str(left - 1))
            sys.stderr.write("error: device offline\n")
            return 1
    if command == "shell":
        # the real client sends "arg1 arg2 ..." joined by spaces; the device's shell parses that one string
        return subprocess.run(["sh", "-c", " ".join(args)], cwd="/").returncode
    if command in ("push", "pull") and len(args) == 2:
        return _copy(*args)
    sys.stderr.write(f"adb: unknown command {command}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

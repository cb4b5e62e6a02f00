"""The loopback S3 server the object-storage tests rely on."""

from __future__ import annotations

import subprocess
import sys


def test_s3_bucket_round_trip_in_process_and_subprocess(s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe(f"{s3_bucket}/k/a.bin", b"abc")
    assert fs.cat(f"{s3_bucket}/k/a.bin") == b"abc"
    code = f"import s3fs; print(s3fs.S3FileSystem().cat('{s3_bucket}/k/a.bin').decode())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "abc"

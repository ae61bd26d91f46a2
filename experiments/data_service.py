"""supcon-data-service: runs a tf.data service dispatcher or worker that augments training batches for the trainer.

    supcon-data-service --role dispatcher --port 5050 --workers localhost:5051,localhost:5052
    supcon-data-service --role worker --dispatcher localhost:5050 --port 5051
    supcon-data-service --role worker --dispatcher localhost:5050 --port 5052
    supcon-pretrain --preset digits_supcon --model_dir runs/x --data_service grpc://localhost:5050

The dispatcher needs the fixed list of its workers (`--workers`): the
training stream is sharded statically by batch index over them
(`supcon_tf/data_service.py` explains why, and what it means for order and
resume). A worker advertises `--host:--port` to the dispatcher and the
trainer; it must match one entry of `--workers`. The server runs until
SIGTERM or SIGINT, then stops and exits with status 0 within about two
seconds: it runs in a child process, killed if its stop takes longer
(`STOP_GRACE_SECONDS`). Bad flags: one line on stderr, exit status 2.

Security: the server's port takes unauthenticated gRPC requests from every
host that can reach it, and a client can make the service run any TensorFlow
graph it registers (reading and writing files with this user's rights).
TensorFlow binds the port on all interfaces and offers neither an option to
bind one interface nor authentication (`docs/security.md` shows where, and
how to fence the ports in). So once the port is bound the process prints one
warning line on stderr saying so, and its start line on stdout says where it
really listens (read back from the kernel's socket table):

    supcon-data-service: dispatcher listening on all interfaces, port 5050 (clients: grpc://<this host>:5050, ...

This binary does not import `experiments.common` (which defines every
training flag): its flags are the fields of `ServiceConfig`
(`experiments/flagging.py`, the binaries' one flag mechanism and error
convention), checked before the server starts; the HOST:PORT grammar is the
library's (`supcon_tf._checks.host_port`), one definition for the library's
`parse_address`, `RunConfig.data_service` and these flags.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import sys
import threading
import time

from experiments import flagging
from experiments.flagging import option

ROLES = ("dispatcher", "worker")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PROGRAM = "supcon-data-service"


def _port(value):
    text = (value or "").strip()
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise ValueError(f"`port` must be an int in [0, 65535] (0: any free port), received: --port={value!r}")
    return int(text)


def _address(value, name):
    """`HOST:PORT` (or grpc://HOST:PORT) -> "HOST:PORT"; ValueError naming the flag otherwise."""
    from supcon_tf._checks import host_port

    host, port = host_port(value, name)
    return f"{host}:{port}"


def _is_host(value):
    """True for a host name, an IPv4 address or an [IPv6] address (the grammar of `supcon_tf._checks.HOST`)."""
    from supcon_tf._checks import HOST

    return re.fullmatch(HOST, value or "") is not None


def _worker_entry(value):
    """One `--workers` entry: HOST:PORT, or HOST (any port)."""
    return value if _is_host(value) else _address(value, "workers")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """The server to run, as given by the flags; `options()` checks it (ValueError, one line, naming the flag)."""

    role: str | None = option(None, f"What to run: {' | '.join(ROLES)}.")
    port: str | None = option(None, "Port to serve on (1..65535; 0 picks a free port, printed at start).")
    workers: str | None = option(
        None, "dispatcher: the comma-separated workers it shards over, HOST:PORT each (or HOST for any port)."
    )
    dispatcher: str | None = option(None, "worker: the dispatcher's HOST:PORT.")
    host: str = option("localhost", "worker: the host name the dispatcher and the trainer reach this worker at.")

    def __post_init__(self):
        self.options()

    def options(self):
        """The validated settings as a dict (what the server process is given)."""
        if self.role not in ROLES:
            raise ValueError(f"`role` must be one of {', '.join(ROLES)}, received: --role={self.role!r}")
        if self.port is None:
            raise ValueError(f"`port` is required for --role={self.role}")
        port = _port(self.port)
        if self.role == "dispatcher":
            if self.dispatcher is not None:
                raise ValueError(f"`dispatcher` is for --role=worker, received: --dispatcher={self.dispatcher!r}")
            if not self.workers:
                raise ValueError(
                    "`workers` is required for --role=dispatcher: the comma-separated HOST:PORT of its workers"
                )
            workers = [_worker_entry(w.strip()) for w in self.workers.split(",")]
            return {"role": "dispatcher", "port": port, "workers": workers}
        if self.workers is not None:
            raise ValueError(f"`workers` is for --role=dispatcher, received: --workers={self.workers!r}")
        if not self.dispatcher:
            raise ValueError("`dispatcher` is required for --role=worker: the dispatcher's HOST:PORT")
        dispatcher = _address(self.dispatcher, "dispatcher")
        if not _is_host(self.host):
            raise ValueError(f"`host` must be a host name or address, received: --host={self.host!r}")
        return {"role": "worker", "port": port, "dispatcher": dispatcher, "host": self.host}


STOP_GRACE_SECONDS = 2.0  # after a signal: how long the server may take to stop before it is killed


def _wait_reachable(address, stop_event):
    """Waits until `address` (HOST:PORT) accepts a TCP connection; False if `stop_event` is set first."""
    while not stop_event.is_set():
        try:
            with socket.create_connection(_split(address), timeout=1.0):
                return True
        except OSError:
            stop_event.wait(0.5)
    return False


def _serve(options):
    """The server process: starts the dispatcher or worker, serves until SIGTERM / SIGINT, stops it, exits 0.

    Runs in a child of the supervising process (`_supervise`), which bounds
    how long a stop may take: TensorFlow's `start()` (a worker whose
    dispatcher does not answer yet) and `stop()` (a worker with a task
    mid-batch: 9 s measured with AutoAugment at 224x224) hold the GIL while
    they block, so no signal handler or timer of this process could run.
    """
    # Ctrl-C reaches the whole process group: the supervisor acts on it (SIGTERM to this child). Until the watcher
    # is installed (importing the library loads TensorFlow), SIGINT is ignored here rather than print a traceback,
    # and SIGTERM ends the child at once. The supervisor's mask (held signals) is inherited: lifted here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    from supcon_tf import resilience

    stop = resilience.SignalWatcher(insist=False).__enter__()  # never left: the process ends with os._exit
    parent = os.getppid()

    def watch_parent():  # a supervisor that died without a signal (SIGKILL) must not leave the server behind
        while not stop.event.wait(1.0):
            if os.getppid() != parent:
                stop.event.set()

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()
    if options["role"] == "worker":
        try:
            socket.create_connection(_split(options["dispatcher"]), timeout=1.0).close()
        except OSError:
            print(f"{_PROGRAM}: worker waiting for the dispatcher at {options['dispatcher']} to answer", flush=True)
            if not _wait_reachable(options["dispatcher"], stop.event):
                os._exit(0)
    from supcon_tf import data_service

    try:
        if options["role"] == "dispatcher":
            server = data_service.start_dispatcher(options["port"], worker_addresses=options["workers"])
            detail = f"sharding over {len(options['workers'])} worker(s): {', '.join(options['workers'])}"
        else:
            server = data_service.start_worker(options["dispatcher"], options["port"], host=options["host"])
            detail = f"dispatcher {options['dispatcher']}"
    except Exception as error:  # noqa: BLE001  (a port in use, an unknown host: reported in one line)
        os._exit(flagging.fail(ValueError(f"cannot start the {options['role']} on port {options['port']}: {error}")))
    from supcon_tf import _keras_compat

    port = options["port"] or _keras_compat.bound_port(server)  # 0: the port it bound
    where = listening_on(port)
    print(security_warning(options["role"], port, where), file=sys.stderr, flush=True)
    if options["role"] == "dispatcher":
        serving = (
            f"dispatcher listening on {where}, port {port} (clients: grpc://<this host>:{port}, "
            f"grpc://localhost:{port} from this host)"
        )
    else:
        serving = f"worker serving at {options['host']}:{port} (advertised), listening on {where}, port {port}"
    print(f"{_PROGRAM}: {serving}; {detail}; SIGTERM or Ctrl-C stops it", flush=True)
    while not stop.event.wait(0.5):
        pass
    server.stop()
    # Nothing is left to write; skip the interpreter's teardown of TensorFlow (seconds on a loaded machine).
    sys.stdout.flush()
    os._exit(0)


ALL_INTERFACES = "all interfaces"


def _decode_proc_address(text):
    """An address of /proc/net/tcp{,6} (hex, each 32-bit word printed in host byte order) -> its text form."""
    raw = bytes.fromhex(text)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _check_bound_port(port):
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"`port` must be a bound port, an int in [1, 65535], received: port={port!r}")


def listening_on(port, proc_net="/proc/net"):
    """Where a TCP port is listened on here: "all interfaces", or the local addresses, read from /proc/net/tcp{,6}.

    TensorFlow's tf.data service servers (and tf.distribute's) bind
    "0.0.0.0:PORT" (`GrpcDataServerBase::Start` in TensorFlow's
    core/data/service/server_lib.cc), which gRPC opens as a wildcard socket:
    every interface, IPv4 and IPv6. This reads the kernel's table rather than
    trusting that; without /proc (not Linux) it reports TensorFlow's bind.
    """
    _check_bound_port(port)
    if not isinstance(proc_net, str) or not proc_net:
        raise ValueError(f"`proc_net` must be a directory path, received: proc_net={proc_net!r}")
    found = []
    for table in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, table)) as lines:
                rows = [line.split() for line in lines.readlines()[1:]]
        except OSError:
            continue
        for row in rows:
            if len(row) > 3 and row[3] == "0A":  # LISTEN
                address, _, hex_port = row[1].partition(":")
                if int(hex_port, 16) == port:
                    found.append(address)
    if not found:
        return f"{ALL_INTERFACES} (TensorFlow binds 0.0.0.0:{port}; not read back on this system)"
    if any(set(address) == {"0"} for address in found):
        return ALL_INTERFACES
    return ", ".join(sorted({_decode_proc_address(address) for address in found}))


def security_warning(role, port, where):
    """The one line printed on stderr when a server starts: who can reach its port, and what they can do there."""
    if role not in ROLES:
        raise ValueError(f"`role` must be one of {', '.join(ROLES)}, received: role={role!r}")
    _check_bound_port(port)
    if not isinstance(where, str) or not where.strip() or "\n" in where:
        raise ValueError(f"`where` must be a one-line description of the listening address, received: where={where!r}")
    return (
        f"{_PROGRAM}: warning: the {role}'s port {port} ({where}) takes unauthenticated requests that run code "
        "(any TensorFlow graph, with this user's rights, e.g. reading and writing files) from every host that can "
        "reach it; TensorFlow has no option to authenticate them or to bind one interface: run it on a private "
        "network, behind a firewall or a cluster network policy that admits only the trainer and the other "
        "service processes (see docs/security.md)"
    )


def _split(address):
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _supervise(options):
    """Runs `_serve` in a child process; on SIGTERM / SIGINT stops it, within `STOP_GRACE_SECONDS`; returns 0.

    This process never imports TensorFlow (so not the library either, whose
    `resilience.SignalWatcher` the child uses), so it always acts on a signal
    at once: it holds SIGTERM / SIGINT blocked (`main`) and takes them with
    `signal.sigtimedwait` while it watches the child. The child gets SIGTERM
    and stops its server; one that has not ended after the grace period is
    killed (a worker's unfinished batches
    are lost either way, as when a worker dies). Returns the child's status
    when it ends by itself (2: the server could not start).
    """
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_serve, args=(options,), name=f"{options['role']}")
    child.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # again: starting multiprocessing's resource tracker unblocks them
    while (caught := signal.sigtimedwait(STOP_SIGNALS, 0.2)) is None:
        if not child.is_alive():
            return child.exitcode if child.exitcode is not None and child.exitcode >= 0 else 1
    began = time.monotonic()
    if child.is_alive():
        os.kill(child.pid, signal.SIGTERM)
        child.join(STOP_GRACE_SECONDS)
    how = "stopped"
    if child.is_alive():
        child.kill()
        child.join()
        how = f"killed after {STOP_GRACE_SECONDS:.0f} s (a task was still busy)"
    signal_name = signal.Signals(caught.si_signo).name
    print(f"{_PROGRAM}: {options['role']} {how} on {signal_name} ({time.monotonic() - began:.2f} s)", flush=True)
    return 0


def main():
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # first: a signal during start-up ends cleanly
    try:
        options = flagging.from_flags(ServiceConfig).options()
        return _supervise(options)
    finally:  # the caller's mask again (a bad flag ends here too): processes it starts later must get signals
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def entry():
    flagging.define(ServiceConfig)
    flagging.run_binary(main)


if __name__ == "__main__":
    entry()

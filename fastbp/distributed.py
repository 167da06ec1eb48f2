"""Synchronous data-parallel training: communicators and the distributed training step.

    from fastbp.distributed import MPIComm
    comm = MPIComm()                                     # under: mpiexec -n 4 python train.py
    model.fit(X, y, batch_size=512, distributed=comm)    # 512 rows per step in all ranks together

Every rank holds the whole dataset and the same model.  Per step, the global batch (a slice of
the epoch's shuffle, the same on every rank) is cut into contiguous shards, one per rank; each
rank runs forward and backward on its shard with the loss gradient scaled by its share of the
rows, the gradient buffer is summed over ranks (one all-reduce), and every rank applies the same
update, so the parameters stay bitwise identical.  BatchNorm uses the statistics of the global
batch (its sums are all-reduced in the forward and backward passes), and dropout masks are keyed
by the row's position in the global batch, so a run equals single-process training on the
combined batch up to floating-point summation order.

Communicators: ``MPIComm`` (mpi4py; ``pip install 'fastbp[mpi]'``), ``simulate(n, fn)`` (n ranks
as threads of this process, for tests and for trying things without MPI).  Nothing here imports
mpi4py until an ``MPIComm`` is made.
"""
import os
import threading
import time

import numpy as np

from ._threads import affinity, cpu_quota, usable_cpus

#: environment variables MPI launchers set (MPICH/Hydra, Open MPI, PMIx, Slurm), -> world size
LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched_ranks():
    """World size an MPI launcher announced to this process (None when not under a launcher)."""
    for k in LAUNCHER_SIZE_VARS:
        v = os.environ.get(k)
        if v and v.isdigit():
            return int(v)
    return None


def default_threads(local_size):
    """Threads per rank so that threads x ranks on this machine <= usable CPUs (ranks that share
    one affinity mask: simulated ranks, or a launcher that did not bind)."""
    return max(1, usable_cpus() // max(1, local_size))


def rank_threads(mine, masks, cpus=None):
    """Threads for a rank whose CPU affinity mask is ``mine`` (a set of CPU ids), when the ranks on
    its machine have ``masks`` (``mine`` among them): the CPUs of its mask divided by the ranks whose
    masks overlap it.  A launcher that binds each rank to its own cores (Open MPI's default for 2
    ranks, ``--map-by slot:PE=k``) gives disjoint masks: all of them; one that does not bind
    (``--bind-to none``, MPICH's default) gives one shared mask: an even share.  ``cpus``: a cap for
    the whole machine (a container's CPU quota), shared evenly by its ranks."""
    mine = set(mine)
    sharing = max(1, sum(1 for m in masks if mine & set(m)))
    n = len(mine) // sharing
    if cpus is not None:
        n = min(n, int(cpus) // max(1, len(masks)))
    return max(1, n)


#: the launch options that give each of k ranks its own ``per`` cores, per launcher
BIND_FIX = ("mpiexec --bind-to none (or --map-by slot:PE={per}) under Open MPI; "
            "mpiexec -bind-to core:{per} under MPICH")


def placement_note(host, local_ranks, threads, masks, machine_cpus):
    """(info line, warning or None) about this machine's ranks: how many threads each runs and,
    when the launcher's binding left them fewer CPUs than an even share of the machine, the fix."""
    counts = sorted(set(threads))
    each = (f"{counts[0]} thread{'s' if counts[0] > 1 else ''} each" if len(counts) == 1
            else f"{', '.join(map(str, threads))} threads")
    cpus = len(set().union(*map(set, masks)))
    info = (f"fastbp: {local_ranks} rank{'s' if local_ranks > 1 else ''} on {host}: {each} "
            f"(the CPUs each may run on, {cpus} in all, shared out among the ranks that may use them)")
    fair = max(1, machine_cpus // max(1, local_ranks))
    if min(threads) >= fair:
        return info, None
    warn = (f"fastbp: warning: the launcher bound the ranks on {host} to {cpus} of its {machine_cpus} CPUs, so "
            f"they run {min(threads)} thread{'s' if min(threads) > 1 else ''} where {fair} could run; to use "
            f"the machine, launch with " + BIND_FIX.format(per=fair))
    return info, warn


class CommError(RuntimeError):
    """A collective failed or timed out (another rank died or raised)."""


#: seconds between a failing rank's message and the abort, so that the launcher forwards the line
#: (MPI_Abort ends every process at once; an exception printed after it was lost in most runs)
ABORT_GRACE = 0.5


def report_failure(comm, exc):
    """Say on stderr, in one line, which rank failed and why, before the job is aborted."""
    import sys
    if isinstance(exc, KeyboardInterrupt):
        what = "interrupted"
    else:
        lines = str(exc).strip().splitlines()
        what = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    sys.stderr.write(f"fastbp: rank {comm.rank} of {comm.size} failed: {what} (aborting the job)\n")
    sys.stderr.flush()
    if comm.size > 1:
        time.sleep(ABORT_GRACE)


class Comm:
    """What training needs from a communicator.  ``allreduce`` sums a numpy array over ranks in
    place (every rank gets the same bits); ``bcast`` copies root's array into everyone's."""
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def allreduce(self, buf):
        raise NotImplementedError

    def bcast(self, buf, root=0):
        raise NotImplementedError

    def abort(self, code=1):
        """End every rank (after an error on this one)."""

    @property
    def threads(self):
        """Threads this rank should run (ranks that share this process's CPUs: an even share)."""
        return default_threads(self.local_size)

    def announce(self):
        """Say once, on stderr, how this machine's ranks run (a communicator that knows does)."""

    def __repr__(self):
        return f"<{type(self).__name__} rank {self.rank} of {self.size}, local {self.local_rank} of {self.local_size}>"


#: a collective is polled without sleeping for this long (a step's all-reduce ends well within it:
#: sleeping there put up to 0.5 ms on every step's critical path), then every POLL_SLEEP seconds
SPIN_SECONDS = 0.25
POLL_SLEEP = 0.001


class MPIComm(Comm):
    """MPI through mpi4py.  Collectives are non-blocking calls polled up to ``timeout`` seconds: a
    rank that died or hangs makes the others raise ``CommError`` (and abort the job) instead of
    waiting forever.  MPI is initialized with thread level *funneled* (only the main thread
    communicates) unless mpi4py was already initialized."""

    def __init__(self, comm=None, timeout=120.0):
        try:
            import mpi4py
            if not getattr(mpi4py, "_fastbp_configured", False):
                mpi4py.rc.thread_level = "funneled"
                mpi4py._fastbp_configured = True
            from mpi4py import MPI
        except ImportError:
            raise ImportError("fastbp.distributed.MPIComm needs mpi4py: pip install 'fastbp[mpi]'") from None
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self._place(local)
        local.Free()
        if not timeout > 0:
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)

    def _place(self, local):
        """Threads per rank from the affinity masks of this machine's ranks (``rank_threads``)."""
        import socket
        masks = local.allgather(sorted(affinity()))
        quota = cpu_quota()
        self._threads = rank_threads(affinity(), masks, quota)
        threads = local.allgather(self._threads)
        machine = os.cpu_count() or len(affinity())
        if quota is not None:
            machine = min(machine, max(1, int(quota)))
        self.placement = placement_note(socket.gethostname(), self.local_size, threads, masks, machine)
        self._announced = False

    @property
    def threads(self):
        return self._threads

    def announce(self):
        if self._announced or self.local_rank != 0:
            return
        self._announced = True
        import sys
        for line in self.placement:
            if line:
                sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _wait(self, req, what):
        start = time.monotonic()
        deadline = start + self.timeout
        while not req.Test():         # each Test() also drives the collective on (Open MPI progresses
            now = time.monotonic()    # a non-blocking collective only inside MPI calls)
            if now - start > SPIN_SECONDS:
                time.sleep(POLL_SLEEP)   # a straggler or a dead rank: off the critical path by now
            if now > deadline:
                self.abort(3)
                raise CommError(f"{what}: no answer from the other ranks within {self.timeout:.0f} s "
                                f"(a rank died or stopped); job aborted")

    def allreduce(self, buf):
        req = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        self._wait(req, "all-reduce")

    def bcast(self, buf, root=0):
        req = self.comm.Ibcast(buf, root=root)
        self._wait(req, "broadcast")

    def abort(self, code=1):
        self.comm.Abort(code)


def _digest(value):
    """48 bits of a value's repr: exact in a float64 sum (a table of zeros but one row)."""
    import hashlib
    return float(int.from_bytes(hashlib.sha256(repr(value).encode()).digest()[:6], "little"))


def check_agreement(comm, fields):
    """Refuse to train when the ranks were given different settings or data.

    ``fields``: {name: value} that must be equal on every rank (architecture, seeds, optimizer, batch
    size, rows, ...).  One all-reduce of a ranks x fields table of digests tells every rank who differs
    from rank 0 in what, so every rank raises the same ValueError (no rank is left waiting in a
    collective).  Without it, a different seed on one rank trained silently to a wrong result."""
    names = sorted(fields)
    table = np.zeros((comm.size, len(names)))
    table[comm.rank] = [_digest(fields[k]) for k in names]
    comm.allreduce(table)
    differ = {k: [r for r in range(1, comm.size) if table[r, j] != table[0, j]] for j, k in enumerate(names)}
    bad = [k for k in names if differ[k]]
    if bad:
        what = "; ".join(f"{k} (rank{'s' if len(differ[k]) > 1 else ''} {', '.join(map(str, differ[k]))} "
                         f"differ{'' if len(differ[k]) > 1 else 's'} from rank 0; this rank has {fields[k]!r})"
                         for k in bad)
        raise ValueError(f"distributed: the ranks were given different settings: {what}; run every rank with the "
                         f"same script, arguments and data")


class _Group:
    """Shared state of simulated ranks: a barrier and one slot per rank."""

    def __init__(self, n, timeout):
        self.n, self.timeout = n, timeout
        self.barrier = threading.Barrier(n, timeout=timeout)
        self.slots = [None] * n


class ThreadComm(Comm):
    """One simulated rank of ``simulate``: collectives meet at a barrier; sums are taken in rank
    order (0, 1, ...), so every rank gets the same bits (and, for 2 ranks, the same as MPI's)."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.n
        self.local_rank, self.local_size = rank, group.n

    def _sync(self):
        try:
            self.group.barrier.wait()
        except threading.BrokenBarrierError:
            raise CommError("a simulated rank failed or timed out; stopping") from None

    def allreduce(self, buf):
        g = self.group
        g.slots[self.rank] = buf
        self._sync()
        if self.rank == 0:
            total = g.slots[0].copy()
            for other in g.slots[1:]:
                total += other
            g.result = total
        self._sync()
        buf[...] = g.result
        self._sync()

    def bcast(self, buf, root=0):
        g = self.group
        if self.rank == root:
            g.result = buf.copy()
        self._sync()
        if self.rank != root:
            buf[...] = g.result
        self._sync()

    def abort(self, code=1):
        self.group.barrier.abort()


def simulate(n, fn, timeout=60.0):
    """Run ``fn(comm)`` as ``n`` ranks in threads of this process; returns their results in rank
    order, or raises the first rank's error (the others are stopped through the barrier)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int (ranks), got {n!r}")
    group = _Group(n, timeout)
    results, errors = [None] * n, [None] * n

    def run(r):
        try:
            results[r] = fn(ThreadComm(group, r))
        except BaseException as e:   # noqa: B036 - reported to the caller below
            errors[r] = e
            group.barrier.abort()
    threads = [threading.Thread(target=run, args=(r,), name=f"fastbp-rank{r}") for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = next((e for e in errors if e is not None and not isinstance(e, CommError)), None) or \
        next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results


# ----------------------------------------------------------------------------- the step
def shard(n_rows, size, rank):
    """(offset, rows) of ``rank``'s contiguous share of ``n_rows`` (the first ranks get one more)."""
    q, r = divmod(n_rows, size)
    return rank * q + min(rank, r), q + (1 if rank < r else 0)


class Step:
    """One rank's part of a data-parallel training step on a plan (see the module docstring)."""

    def __init__(self, plan, comm, optimizer, opt_state):
        self.plan, self.comm, self.optimizer, self.opt_state = plan, comm, optimizer, opt_state
        self.cache = {}
        # BN-like ops write already-global gradients in their backward; on ranks other than 0
        # those slices are zeroed before the gradient all-reduce so the sum counts them once
        self.global_grads = [g for op in plan.ops if op.batch_coupled for g in op.grads.values()]

    def _parts(self, N, row0):
        key = (N, row0)
        if key in self.cache:
            return self.cache[key]
        from .ops import IO
        from .program import Program
        from .workspace import Workspace
        plan = self.plan
        ws = Workspace(plan, N, row0)
        ops, n = plan.ops, len(plan.ops)
        ios = [IO(ws, ops, i) for i in range(n)]

        def segments(order, make):
            """The plan's entries in ``order``, cut into programs around the batch-coupled ops
            (run by their sync_* methods); ``make(i)``: op i's entries, the op's own first."""
            out, run = [], []
            for i in order:
                entries = make(i)
                if ops[i].batch_coupled:
                    if run:
                        out.append(("program", Program(plan.dtype, run)))
                    out.append(("coupled", i))
                    run = entries[1:]     # what follows the op's own entry (a delta's accumulation)
                else:
                    run += entries
            if run:
                out.append(("program", Program(plan.dtype, run)))
            return out
        fwd = segments(range(n), lambda i: [ops[i].forward_entry(ios[i], update_stats=True)])
        loss = Program(plan.dtype, [plan.loss.entry(ios[-1], ops[-1], True, True)])
        bwd = segments(range(n - 1, -1, -1), lambda i: plan.backward_entries(ws, ios, i, False, 0.0))
        update = Program(plan.dtype, [self.optimizer.entry(ws, plan.params, plan.grads, self.opt_state)])
        ws.finish()
        self.cache[key] = parts = (ws, ios, fwd, loss, bwd, update)
        return parts

    def run(self, X, y, idx, t, lr, nt):
        """Train on the global batch ``X[idx]``; returns (global mean loss, global correct count)."""
        comm, plan = self.comm, self.plan
        n_global = idx.shape[0]
        off, rows = shard(n_global, comm.size, comm.rank)
        ws, ios, fwd, loss_prog, bwd, update = self._parts(rows, off)
        if plan.precision == "bf16":
            ws.bf16_ok[:] = 0       # the weights changed since (broadcast, all-reduced update)
        ws.gather(X, y, idx[off:off + rows], nt)
        reduce = comm.allreduce
        for kind, part in fwd:
            if kind == "program":
                part.run(ws, t, lr, True, nt)
            else:
                plan.ops[part].sync_forward(ios[part], reduce, n_global, True)
        loss = loss_prog.run(ws, t, lr, True, nt)
        ws.deltas[-1] *= ws.deltas[-1].dtype.type(rows / n_global)   # d(global mean loss)/d(logits)
        for kind, part in bwd:
            if kind == "program":
                part.run(ws, t, lr, True, nt)
            else:
                plan.ops[part].sync_backward(ios[part], reduce, n_global)
        if comm.rank != 0:
            for g in self.global_grads:
                g[...] = 0
        comm.allreduce(plan.grads)
        stats = np.array([loss * rows, ws.stats[1]], np.float64)
        comm.allreduce(stats)
        update.run(ws, t, lr, True, nt)
        return stats[0] / n_global, stats[1]

    def run_local(self, X, y, idx, t, lr, nt):
        """Local SGD: one fused training step on this rank's shard alone (no communication);
        returns (local mean loss, local correct count, local rows)."""
        from .workspace import Workspace
        off, rows = shard(idx.shape[0], self.comm.size, self.comm.rank)
        key = ("local", rows, off)
        ws = self.cache.get(key)
        if ws is None:
            ws = self.cache[key] = Workspace(self.plan, rows, off)
        ws.gather(X, y, idx[off:off + rows], nt)
        loss = self.plan.run(ws, "train", t, lr, True, nt, self.optimizer, self.opt_state)
        return loss, float(ws.stats[1]), rows

    def average(self, model):
        """Parameters and running statistics := their mean over ranks (the same bits everywhere)."""
        for a in [model.params] + [a for op in model.plan.ops for a in op.state.values()]:
            self.comm.allreduce(a)
            a /= a.dtype.type(self.comm.size)

    def broadcast_state(self, model):
        """Rank 0's parameters, running statistics and optimizer state to every rank."""
        self.comm.bcast(model.params)
        for op in model.plan.ops:
            for a in op.state.values():
                self.comm.bcast(a)
        for a in model.opt_state.values():
            if a.size:
                self.comm.bcast(a)

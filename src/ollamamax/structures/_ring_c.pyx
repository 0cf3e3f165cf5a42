# cython: language_level=3, freethreading_compatible=True, binding=False, embedsignature.format=clinic
"""Native RingQueue: a thin Cython wrapper over native/src/ring.c.

The C ring stores ``void*`` and never touches reference counts.  Ownership rules:

* ``try_put``/``put_nowait``/``put_many`` take a new reference to each item *before*
  it becomes visible in the ring, and drop it again if the push failed;
* ``try_get``/``get_nowait``/``get_many`` return the reference that travelled through
  the ring (stolen, no extra INCREF/DECREF pair);
* items still inside when the queue is deallocated are released then.

GC: the queue takes part in cyclic garbage collection, so a cycle through a queue
(an item that references its own queue) is collected.  ``tp_traverse`` walks the
items with ``omx_ring_visit``, which needs a quiescent ring: that holds because every
push/pop in this module runs with the GIL held (GIL builds) and the collector runs
with the GIL held.  ``tp_clear`` drains the ring.  In free-threaded builds the items
are NOT traversed (``gc.get_referents`` calls ``tp_traverse`` without stopping the
world, so walking a ring that other threads mutate would be unsafe): there a cycle
through a queue is only freed once the item is taken out.

Blocking ``get``/``put`` (and ``get_many``/``put_many`` with a timeout) sleep on a
per-queue "gate" (a wake-up counter plus a binary ``PyThread`` lock used as a
semaphore) only on the slow path.  Fast paths stay lock-free: a push that succeeds
does one extra load of the getters' waiting count and touches the lock only when
somebody waits (symmetrically for pops and putters).  No wake-up is lost: see the
SLEEP/WAKE CONTRACT in native/src/ring.c; a woken waiter that succeeds passes the
wake-up on while items (or free slots) and waiters remain.

Calling convention: the module is compiled with ``binding=False`` so methods are
plain ``builtin_function_or_method`` objects (METH_O / METH_NOARGS / FASTCALL, like
``collections.deque``'s): CPython specializes calls to them, while Cython's default
``cyfunction`` methods go through a bound ``method`` object and an extra vectorcall
hop (about a quarter of a ``try_put``+``try_get`` pair).

See ``_ring_py`` for the pure-Python twin and the full semantics.
"""

cimport cython
from cpython.object cimport PyObject

from libc.math cimport INFINITY
from time import monotonic as _monotonic
from types import GenericAlias

from ollamamax.structures.exceptions import QueueEmpty, QueueFull

cdef extern from "ollamamax/ring.h":
    ctypedef struct omx_ring:
        pass
    size_t OMX_RING_MAX_CAPACITY
    omx_ring *omx_ring_new(size_t capacity) nogil
    void omx_ring_free(omx_ring *r) nogil
    size_t omx_ring_capacity(const omx_ring *r) nogil
    int omx_ring_try_push(omx_ring *r, void *item) nogil
    int omx_ring_try_pop(omx_ring *r, void **out) nogil
    size_t omx_ring_push_many(omx_ring *r, void * const *items, size_t n) nogil
    size_t omx_ring_pop_many(omx_ring *r, void **out, size_t n) nogil
    size_t omx_ring_size(const omx_ring *r) nogil
    int omx_ring_visit(const omx_ring *r, int (*fn)(void *item, void *ctx), void *ctx)

cdef extern from *:
    """
    #include <stdatomic.h>
    #include "pythread.h"

    /* Reference-count glue kept in C so the lock-free part never sees a PyObject. */
    static CYTHON_INLINE PyObject *omx_steal(void *p) { return (PyObject *)p; }

    /* A new list owning the k references in buf (released if the list cannot be made). */
    static PyObject *omx_list_from_stolen(void **buf, Py_ssize_t k) {
        PyObject *l = PyList_New(k);
        if (l == NULL) {
            for (Py_ssize_t i = 0; i < k; i++) Py_DECREF((PyObject *)buf[i]);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(l, i, (PyObject *)buf[i]);
        return l;
    }

    /* GC support.  Cython emits a GC-enabled type because RingQueue has one object
     * attribute (_gc_anchor); omx_install_gc wraps its tp_traverse/tp_clear so that
     * the items inside the ring are visited/released too.  The ring pointer is found
     * at a byte offset measured by the module at import time. */
    static Py_ssize_t omx_ring_field_offset = -1;
    static traverseproc omx_base_traverse = NULL;
    static inquiry omx_base_clear = NULL;

    typedef struct { visitproc visit; void *arg; } omx_visit_ctx;

    static int omx_visit_item(void *item, void *ctx) {
        omx_visit_ctx *v = (omx_visit_ctx *)ctx;
        return v->visit((PyObject *)item, v->arg);
    }

    static omx_ring *omx_ring_of(PyObject *self) {
        return *(omx_ring **)((char *)self + omx_ring_field_offset);
    }

    static int omx_ring_traverse(PyObject *self, visitproc visit, void *arg) {
        omx_ring *r = omx_ring_of(self);
        if (r != NULL) {
            omx_visit_ctx v = {visit, arg};
            int rc = omx_ring_visit(r, omx_visit_item, &v);
            if (rc) return rc;
        }
        return omx_base_traverse ? omx_base_traverse(self, visit, arg) : 0;
    }

    static int omx_ring_clear(PyObject *self) {
        omx_ring *r = omx_ring_of(self);
        void *p;
        if (r != NULL) {
            while (omx_ring_try_pop(r, &p)) Py_DECREF((PyObject *)p);
        }
        return omx_base_clear ? omx_base_clear(self) : 0;
    }

    static void omx_install_gc(PyObject *type, Py_ssize_t offset) {
        PyTypeObject *t = (PyTypeObject *)type;
        omx_ring_field_offset = offset;
    #ifdef Py_GIL_DISABLED
        /* Free-threaded builds: gc.get_referents() calls tp_traverse without
         * stopping the world, so walking a ring that other threads mutate could
         * visit a freed object.  Items are not traversed there (documented). */
        (void)t;
        return;
    #endif
        if (t->tp_traverse != omx_ring_traverse) {
            omx_base_traverse = t->tp_traverse;
            omx_base_clear = t->tp_clear;
            t->tp_traverse = omx_ring_traverse;
            t->tp_clear = omx_ring_clear;
        }
    }

    static int omx_type_has_gc(PyObject *type) {
        return PyType_HasFeature((PyTypeObject *)type, Py_TPFLAGS_HAVE_GC);
    }

    static void omx_drain_and_free(omx_ring *r) {
        void *p;
        if (r == NULL) return;
        while (omx_ring_try_pop(r, &p)) Py_DECREF((PyObject *)p);
        omx_ring_free(r);
    }

    /* ---- Gates: sleeping on an empty (or full) ring, slow path only. ----
     * waiting:  threads between announcing themselves and leaving the wait;
     * signaled: 1 while `lock` holds an unconsumed wake-up (the lock is released);
     * lock:     binary semaphore; acquired (held by nobody in particular) means
     *           "no wake-up pending".  Releases and acquires alternate because a
     *           release happens only after winning signaled 0 -> 1 and signaled
     *           returns to 0 only after an acquire.
     * A waiter announces itself (seq_cst RMW on waiting), re-checks the ring with
     * omx_ring_size (seq_cst loads) and sleeps only if the ring is still empty
     * (full); a pusher (popper) loads waiting with seq_cst after its seq_cst claim.
     * See "SLEEP/WAKE CONTRACT" in native/src/ring.c for why nothing is lost. */
    typedef struct {
        _Atomic long waiting;
        _Atomic int signaled;
        PyThread_type_lock lock;
    } omx_gate;

    static int omx_gate_init(omx_gate *g) {
        atomic_init(&g->waiting, 0);
        atomic_init(&g->signaled, 0);
        g->lock = PyThread_allocate_lock();
        if (g->lock == NULL) return -1;
        PyThread_acquire_lock(g->lock, WAIT_LOCK);  /* held: no wake-up pending */
        return 0;
    }

    static void omx_gate_fini(omx_gate *g) {
        if (g->lock == NULL) return;
        if (!atomic_load(&g->signaled)) PyThread_release_lock(g->lock);
        PyThread_free_lock(g->lock);
        g->lock = NULL;
    }

    static void omx_gate_signal(omx_gate *g) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&g->signaled, &expected, 1)) {
            PyThread_release_lock(g->lock);
        }
    }

    /* After a successful push (pop): wake one waiting getter (putter), if any. */
    static CYTHON_INLINE void omx_gate_wake(omx_gate *g) {
        if (atomic_load(&g->waiting) > 0) omx_gate_signal(g);
    }

    /* A woken waiter that succeeded passes the wake-up on while `more` holds. */
    static CYTHON_INLINE void omx_gate_pass(omx_gate *g, int more) {
        if (more && atomic_load(&g->waiting) > 0) omx_gate_signal(g);
    }

    /* Waits until the ring may have items (for_items) or room (!for_items), at
     * most timeout_us microseconds (-1: no limit; clamped to PY_TIMEOUT_MAX).
     * Returns 1: retry the operation; 0: timed out; -1: a signal handler raised.
     * Called with the GIL held (GIL builds); sleeps without it. */
    static int omx_gate_wait(omx_gate *g, omx_ring *r, size_t cap, int for_items,
                             long long timeout_us) {
        PyLockStatus st;
        size_t n;
        if (timeout_us > PY_TIMEOUT_MAX) timeout_us = PY_TIMEOUT_MAX;
        atomic_fetch_add(&g->waiting, 1);
        n = omx_ring_size(r);
        if (for_items ? n != 0 : n < cap) {
            /* Not (or no longer) empty/full; an item/slot still in transit
             * (claimed, not committed) is a few instructions from done. */
            atomic_fetch_sub(&g->waiting, 1);
            return 1;
        }
        Py_BEGIN_ALLOW_THREADS
        st = PyThread_acquire_lock_timed(g->lock, timeout_us, 1);
        Py_END_ALLOW_THREADS
        if (st == PY_LOCK_ACQUIRED) atomic_store(&g->signaled, 0);
        atomic_fetch_sub(&g->waiting, 1);
        if (st == PY_LOCK_INTR) {
            return Py_MakePendingCalls() < 0 ? -1 : 1;  /* run signal handlers */
        }
        return st == PY_LOCK_ACQUIRED ? 1 : 0;
    }

    /* Pushes o (new reference taken first, dropped on failure); wakes a getter. */
    static CYTHON_INLINE int omx_push_obj(omx_ring *r, omx_gate *items, PyObject *o) {
        Py_INCREF(o);
        if (omx_ring_try_push(r, (void *)o)) {
            omx_gate_wake(items);
            return 1;
        }
        Py_DECREF(o);
        return 0;
    }

    /* Pushes the longest run of seq[start:] (a list or tuple) that fits; returns
     * its length.  Wakes a getter if anything was pushed. */
    static Py_ssize_t omx_push_fast_seq(omx_ring *r, omx_gate *gate, PyObject *seq,
                                        Py_ssize_t start, size_t cap) {
        Py_ssize_t done = start;
    #ifdef Py_GIL_DISABLED
        Py_BEGIN_CRITICAL_SECTION(seq);
    #endif
        {
            PyObject **items = PySequence_Fast_ITEMS(seq);
            Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
            while (done < n) {
                size_t room = cap - omx_ring_size(r);  /* a snapshot: bounds the INCREFs */
                size_t m = (size_t)(n - done) < room ? (size_t)(n - done) : room;
                if (m == 0) break;
                for (size_t i = 0; i < m; i++) Py_INCREF(items[done + (Py_ssize_t)i]);
                size_t k = omx_ring_push_many(r, (void *const *)(items + done), m);
                for (size_t i = k; i < m; i++) Py_DECREF(items[done + (Py_ssize_t)i]);
                done += (Py_ssize_t)k;
                if (k < m) break;
            }
        }
    #ifdef Py_GIL_DISABLED
        Py_END_CRITICAL_SECTION();
    #endif
        if (done > start) omx_gate_wake(gate);
        return done > start ? done - start : 0;
    }
    """
    ctypedef struct omx_gate:
        pass
    int omx_gate_init(omx_gate *g)
    void omx_gate_fini(omx_gate *g)
    void omx_gate_wake(omx_gate *g)
    void omx_gate_pass(omx_gate *g, int more)
    int omx_gate_wait(omx_gate *g, omx_ring *r, size_t cap, int for_items,
                      long long timeout_us) except -1
    object omx_steal(void *p)
    int omx_push_obj(omx_ring *r, omx_gate *g, PyObject *o)
    Py_ssize_t omx_push_fast_seq(omx_ring *r, omx_gate *g, object seq, Py_ssize_t start, size_t cap)
    object omx_list_from_stolen(void **buf, Py_ssize_t k)
    void omx_drain_and_free(omx_ring *r)
    void omx_install_gc(object type, Py_ssize_t offset)
    bint omx_type_has_gc(object type)

cdef extern from "stdlib.h":
    void *malloc(size_t n) nogil
    void free(void *p) nogil

# Upper bound on the spins put_many waits for a slot that a consumer has claimed
# but not yet released (free-threaded builds only; a few instructions long).
cdef int _TRANSIENT_RETRIES = 100000


cdef Py_ssize_t _check_capacity(object capacity, str what) except -1:
    if isinstance(capacity, bool) or not hasattr(type(capacity), "__index__"):
        raise TypeError(f"{what} must be an int, not {type(capacity).__name__}")
    cdef object value = capacity.__index__()
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")
    if value > <object>OMX_RING_MAX_CAPACITY:
        raise ValueError(f"{what} too large: {value}")
    return <Py_ssize_t>value


cdef double _deadline(object timeout) except? -1.0:
    """monotonic() + timeout; INFINITY for None (or an infinite timeout)."""
    cdef double t
    if timeout is None:
        return INFINITY
    if isinstance(timeout, (str, bytes)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    t = timeout
    if not (t >= 0.0):  # also rejects NaN
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    if t == INFINITY:
        return INFINITY
    return <double>_monotonic() + t


@cython.final
@cython.auto_pickle(False)
cdef class RingQueue:
    """Bounded lock-free multi-producer/multi-consumer FIFO of Python objects.

    ``RingQueue(capacity)``: holds at most ``capacity`` items (exactly the number
    asked for; the slot array is rounded up to a power of two internally).
    Every method may be called from any number of threads, with or without the GIL.
    ``len()``, ``empty()`` and ``full()`` are snapshots when other threads are active.
    ``get``/``put`` (and ``get_many``/``put_many`` given a ``timeout``) block; all
    other methods never wait.
    Memory: 16 bytes per slot, allocated up front (slots = capacity rounded up to a
    power of two, at least 2).
    """

    cdef omx_ring *_r
    cdef size_t _cap
    cdef object _gc_anchor  # always None: makes the type GC-enabled (see module doc)
    cdef object __weakref__
    cdef omx_gate _items  # getters sleep here while the ring is empty
    cdef omx_gate _room   # putters sleep here while the ring is full

    def __cinit__(self, capacity):
        cdef Py_ssize_t cap = _check_capacity(capacity, "capacity")
        self._r = omx_ring_new(<size_t>cap)
        if self._r == NULL:
            raise MemoryError(f"cannot allocate a RingQueue of capacity {cap}")
        self._cap = <size_t>cap
        if omx_gate_init(&self._items) < 0 or omx_gate_init(&self._room) < 0:
            raise MemoryError("cannot allocate the RingQueue's wake-up locks")

    def __dealloc__(self):
        omx_drain_and_free(self._r)
        self._r = NULL
        omx_gate_fini(&self._items)
        omx_gate_fini(&self._room)

    @property
    def capacity(self):
        """The capacity given to the constructor."""
        return self._cap

    def __len__(self):
        return omx_ring_size(self._r)

    @cython.always_allow_keywords(False)
    def empty(self):
        """True if the queue holds no item (a snapshot under concurrency)."""
        return omx_ring_size(self._r) == 0

    @cython.always_allow_keywords(False)
    def full(self):
        """True if the queue holds ``capacity`` items (a snapshot under concurrency)."""
        return omx_ring_size(self._r) >= self._cap

    @cython.always_allow_keywords(False)
    def try_put(self, item):
        """Append ``item``; return False (and keep nothing) if the queue is full."""
        return omx_push_obj(self._r, &self._items, <PyObject *>item) != 0

    def try_get(self, default=None):
        """Remove and return the oldest item, or ``default`` if the queue is empty."""
        cdef void *p
        if omx_ring_try_pop(self._r, &p):
            omx_gate_wake(&self._room)
            return omx_steal(p)
        return default

    @cython.always_allow_keywords(False)
    def put_nowait(self, item):
        """Append ``item``; raise :class:`QueueFull` if the queue is full."""
        if not omx_push_obj(self._r, &self._items, <PyObject *>item):
            raise QueueFull(f"RingQueue is full (capacity {self._cap})")

    @cython.always_allow_keywords(False)
    def get_nowait(self):
        """Remove and return the oldest item; raise :class:`QueueEmpty` if empty."""
        cdef void *p
        if omx_ring_try_pop(self._r, &p):
            omx_gate_wake(&self._room)
            return omx_steal(p)
        raise QueueEmpty("RingQueue is empty")

    cdef int _wait(self, omx_gate *g, int for_items, double deadline) except -1:
        """Sleep on ``g`` until woken or ``deadline``: 1 = retry, 0 = timed out."""
        cdef double left
        cdef long long us = -1
        if deadline != INFINITY:
            left = deadline - <double>_monotonic()
            if left <= 0.0:
                return 0
            us = <long long>(left * 1e6) + 1
        return omx_gate_wait(g, self._r, self._cap, for_items, us)

    def get(self, timeout=None):
        """Remove and return the oldest item, waiting while the queue is empty.

        ``timeout``: seconds to wait at most (``None``: no limit; ``0``: do not
        wait); raises :class:`QueueEmpty` when it expires.  Any thread; the GIL is
        released while waiting, and signal handlers (Ctrl-C) run.
        """
        cdef void *p
        cdef double deadline = _deadline(timeout)
        cdef int rc
        if omx_ring_try_pop(self._r, &p):
            omx_gate_wake(&self._room)
            return omx_steal(p)
        while True:
            rc = self._wait(&self._items, 1, deadline)
            if omx_ring_try_pop(self._r, &p):
                omx_gate_wake(&self._room)
                omx_gate_pass(&self._items, omx_ring_size(self._r) != 0)
                return omx_steal(p)
            if rc == 0:
                raise QueueEmpty("RingQueue.get timed out")

    def put(self, item, timeout=None):
        """Append ``item``, waiting while the queue is full.

        ``timeout``: seconds to wait at most (``None``: no limit; ``0``: do not
        wait); raises :class:`QueueFull` when it expires (``item`` not stored).
        """
        cdef double deadline = _deadline(timeout)
        cdef int rc
        if omx_push_obj(self._r, &self._items, <PyObject *>item):
            return None
        while True:
            rc = self._wait(&self._room, 0, deadline)
            if omx_push_obj(self._r, &self._items, <PyObject *>item):
                omx_gate_pass(&self._room, omx_ring_size(self._r) < self._cap)
                return None
            if rc == 0:
                raise QueueFull(f"RingQueue.put timed out (capacity {self._cap})")

    def put_many(self, items, timeout=0):
        """Append items in order until the queue is full; return how many were stored.

        A ``list`` or ``tuple`` is pushed in C batches: the first ``n`` items are
        stored and ``items[n:]`` are the ones that did not fit.  Any other iterable is
        pulled one item at a time and only while the queue has room, so no item is
        taken from it that is not stored -- except when another producer fills the
        last free slot between the room check and the push: then :class:`QueueFull`
        is raised with ``.item`` (the pulled item, not stored) and ``.count`` (how
        many were stored before it).

        ``timeout``: seconds to wait for room whenever the queue is full (default
        ``0``: never wait; ``None``: no limit, i.e. store everything).  Returns the
        count stored before the timeout expired.
        """
        cdef Py_ssize_t count = 0
        cdef int spins
        cdef int rc
        cdef bint waits = timeout is None or timeout != 0
        cdef double deadline = _deadline(timeout) if waits else 0.0
        if type(items) is list or type(items) is tuple:
            count = omx_push_fast_seq(self._r, &self._items, items, 0, self._cap)
            if not waits:
                return count
            while count < len(items):  # re-read: a free-threaded caller may mutate it
                rc = self._wait(&self._room, 0, deadline)
                count += omx_push_fast_seq(self._r, &self._items, items, count, self._cap)
                if rc == 0:
                    break
            omx_gate_pass(&self._room, omx_ring_size(self._r) < self._cap)
            return count
        it = iter(items)
        while True:
            while omx_ring_size(self._r) >= self._cap:
                if not waits or self._wait(&self._room, 0, deadline) == 0:
                    if omx_ring_size(self._r) >= self._cap:
                        return count
            try:
                item = next(it)
            except StopIteration:
                break
            spins = 0
            while not omx_push_obj(self._r, &self._items, <PyObject *>item):
                spins += 1
                if omx_ring_size(self._r) >= self._cap or spins > _TRANSIENT_RETRIES:
                    if waits and spins <= _TRANSIENT_RETRIES and self._wait(&self._room, 0, deadline):
                        continue
                    exc = QueueFull(
                        f"RingQueue became full while put_many held an item ({count} stored)")
                    exc.item = item
                    exc.count = count
                    raise exc
            count += 1
        if waits:
            omx_gate_pass(&self._room, omx_ring_size(self._r) < self._cap)
        return count

    def get_many(self, max_items, timeout=0):
        """Remove and return up to ``max_items`` of the oldest items, in order.

        ``timeout``: seconds to wait for at least one item while the queue is empty
        (default ``0``: never wait; ``None``: no limit).  Returns ``[]`` when it
        expires (or when ``max_items`` is 0).
        """
        if isinstance(max_items, bool) or not hasattr(type(max_items), "__index__"):
            raise TypeError(f"max_items must be an int, not {type(max_items).__name__}")
        n_obj = max_items.__index__()
        if n_obj < 0:
            raise ValueError(f"max_items must be >= 0, got {n_obj}")
        cdef bint waits = timeout is None or timeout != 0
        cdef double deadline = _deadline(timeout) if waits else 0.0
        cdef size_t want = self._cap if n_obj > <object>self._cap else <size_t>n_obj
        cdef size_t n
        cdef size_t avail
        cdef void *small[64]
        cdef void **buf = small
        cdef size_t k = 0
        cdef int rc = 1
        cdef bint slow = False
        if want == 0:
            return []
        while True:
            avail = omx_ring_size(self._r)  # snapshot: sizes the buffer
            n = want if want < avail else avail
            if n > 0:
                if n > 64:
                    buf = <void **>malloc(n * sizeof(void *))
                    if buf == NULL:
                        raise MemoryError()
                try:
                    k = omx_ring_pop_many(self._r, buf, n)
                    if k < n:  # a slot in transit may have cut the run short
                        k += omx_ring_pop_many(self._r, buf + k, n - k)
                    if k:
                        omx_gate_wake(&self._room)
                        if slow:
                            omx_gate_pass(&self._items, omx_ring_size(self._r) != 0)
                        return omx_list_from_stolen(buf, <Py_ssize_t>k)
                finally:
                    if buf != small:
                        free(buf)
                        buf = small
            if not waits or rc == 0:
                return []
            slow = True
            rc = self._wait(&self._items, 1, deadline)

    @classmethod
    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    def __repr__(self):
        return f"<RingQueue size={omx_ring_size(self._r)} capacity={self._cap}>"


cdef _setup_gc():
    cdef RingQueue probe = RingQueue(1)
    cdef Py_ssize_t offset = <char *>&probe._r - <char *><PyObject *>probe
    if not omx_type_has_gc(RingQueue):  # pragma: no cover - depends on Cython
        raise ImportError("ollamamax.structures._ring_c: RingQueue was not built as a GC type")
    omx_install_gc(RingQueue, offset)


_setup_gc()

# cython: language_level=3, freethreading_compatible=True
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

See ``_ring_py`` for the pure-Python twin and the full semantics.
"""

cimport cython
from cpython.object cimport PyObject

from types import GenericAlias

from ollamamax._errors import QueueEmpty, QueueFull

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
    /* Reference-count glue kept in C so the lock-free part never sees a PyObject. */
    static CYTHON_INLINE PyObject *omx_steal(void *p) { return (PyObject *)p; }

    static CYTHON_INLINE int omx_push_obj(omx_ring *r, PyObject *o) {
        Py_INCREF(o);
        if (omx_ring_try_push(r, (void *)o)) {
            return 1;
        }
        Py_DECREF(o);
        return 0;
    }

    /* Pushes the longest prefix of a list or tuple that fits; returns its length. */
    static Py_ssize_t omx_push_fast_seq(omx_ring *r, PyObject *seq, size_t cap) {
        Py_ssize_t done = 0;
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
        return done;
    }

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
    """
    object omx_steal(void *p)
    int omx_push_obj(omx_ring *r, PyObject *o)
    Py_ssize_t omx_push_fast_seq(omx_ring *r, object seq, size_t cap)
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


@cython.final
@cython.auto_pickle(False)
cdef class RingQueue:
    """Bounded lock-free multi-producer/multi-consumer FIFO of Python objects.

    ``RingQueue(capacity)``: holds at most ``capacity`` items (exactly the number
    asked for; the slot array is rounded up to a power of two internally).
    Every method may be called from any number of threads, with or without the GIL.
    ``len()``, ``empty()`` and ``full()`` are snapshots when other threads are active.
    Memory: 16 bytes per slot, allocated up front (slots = capacity rounded up to a
    power of two, at least 2).
    """

    cdef omx_ring *_r
    cdef size_t _cap
    cdef object _gc_anchor  # always None: makes the type GC-enabled (see module doc)
    cdef object __weakref__

    def __cinit__(self, capacity):
        cdef Py_ssize_t cap = _check_capacity(capacity, "capacity")
        self._r = omx_ring_new(<size_t>cap)
        if self._r == NULL:
            raise MemoryError(f"cannot allocate a RingQueue of capacity {cap}")
        self._cap = <size_t>cap

    def __dealloc__(self):
        omx_drain_and_free(self._r)
        self._r = NULL

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
        return omx_push_obj(self._r, <PyObject *>item) != 0

    def try_get(self, default=None):
        """Remove and return the oldest item, or ``default`` if the queue is empty."""
        cdef void *p
        if omx_ring_try_pop(self._r, &p):
            return omx_steal(p)
        return default

    @cython.always_allow_keywords(False)
    def put_nowait(self, item):
        """Append ``item``; raise :class:`QueueFull` if the queue is full."""
        if not omx_push_obj(self._r, <PyObject *>item):
            raise QueueFull(f"RingQueue is full (capacity {self._cap})")

    @cython.always_allow_keywords(False)
    def get_nowait(self):
        """Remove and return the oldest item; raise :class:`QueueEmpty` if empty."""
        cdef void *p
        if omx_ring_try_pop(self._r, &p):
            return omx_steal(p)
        raise QueueEmpty("RingQueue is empty")

    def put_many(self, items):
        """Append items in order until the queue is full; return how many were stored.

        A ``list`` or ``tuple`` is pushed in C batches: the first ``n`` items are
        stored and ``items[n:]`` are the ones that did not fit.  Any other iterable is
        pulled one item at a time and only while the queue has room, so no item is
        taken from it that is not stored -- except when another producer fills the
        last free slot between the room check and the push: then :class:`QueueFull`
        is raised with ``.item`` (the pulled item, not stored) and ``.count`` (how
        many were stored before it).
        """
        cdef Py_ssize_t count = 0
        cdef int spins
        if type(items) is list or type(items) is tuple:
            return omx_push_fast_seq(self._r, items, self._cap)
        it = iter(items)
        while omx_ring_size(self._r) < self._cap:
            try:
                item = next(it)
            except StopIteration:
                break
            spins = 0
            while not omx_push_obj(self._r, <PyObject *>item):
                spins += 1
                if omx_ring_size(self._r) >= self._cap or spins > _TRANSIENT_RETRIES:
                    exc = QueueFull(
                        f"RingQueue became full while put_many held an item ({count} stored)")
                    exc.item = item
                    exc.count = count
                    raise exc
            count += 1
        return count

    def get_many(self, max_items):
        """Remove and return up to ``max_items`` of the oldest items, in order."""
        if isinstance(max_items, bool) or not hasattr(type(max_items), "__index__"):
            raise TypeError(f"max_items must be an int, not {type(max_items).__name__}")
        n_obj = max_items.__index__()
        if n_obj < 0:
            raise ValueError(f"max_items must be >= 0, got {n_obj}")
        cdef size_t n = self._cap if n_obj > <object>self._cap else <size_t>n_obj
        cdef size_t avail = omx_ring_size(self._r)  # snapshot: sizes the buffer
        cdef void *small[64]
        cdef void **buf = small
        cdef size_t k
        if n > avail:
            n = avail
        if n == 0:
            return []
        if n > 64:
            buf = <void **>malloc(n * sizeof(void *))
            if buf == NULL:
                raise MemoryError()
        try:
            k = omx_ring_pop_many(self._r, buf, n)
            if k < n:  # a slot in transit may have cut the run short
                k += omx_ring_pop_many(self._r, buf + k, n - k)
            return omx_list_from_stolen(buf, <Py_ssize_t>k)
        finally:
            if buf != small:
                free(buf)

    def __class_getitem__(cls, item):
        return GenericAlias(cls, item)

    def __repr__(self):
        return f"<RingQueue size={omx_ring_size(self._r)} capacity={self._cap}>"


cdef _setup_gc():
    cdef RingQueue probe = RingQueue(1)
    cdef Py_ssize_t offset = <char *>&probe._r - <char *><PyObject *>probe
    if not omx_type_has_gc(RingQueue):  # pragma: no cover - depends on Cython
        raise ImportError("ollamamax._ring_c: RingQueue was not built as a GC type")
    omx_install_gc(RingQueue, offset)


_setup_gc()

# cython: language_level=3
"""Native ``ObjectPool``: Python owns the objects, native/src/pool.c owns the
idle stack, the outstanding set and the counters.  Semantics are those of
``ollamamax.structures._pool_py`` (the specification); see its docstring.

Garbage collection: the pool holds one strong reference per pointer stored in the
C arrays (idle stack and outstanding set), which Cython cannot see.  The module
therefore replaces the type's tp_traverse / tp_clear (after Cython's own, which
cover ``_factory`` and ``_reset``) with functions that also visit / drop those
objects, so a cycle through a pooled object (an idle object that refers back to
its pool) is collected."""

from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdint cimport uint64_t

from ollamamax.structures._pool_py import PoolInfo

cdef extern from "ollamamax/pool.h":
    ctypedef struct omx_pool:
        size_t nidle
        size_t maxsize
        size_t nout
        uint64_t created
        uint64_t reused
    int omx_pool_init(omx_pool *p, size_t maxsize)
    void omx_pool_destroy(omx_pool *p)
    int omx_pool_reserve(omx_pool *p)
    int omx_pool_grow(omx_pool *p)
    void *omx_pool_take_idle(omx_pool *p, int *dup)
    int omx_pool_track_new(omx_pool *p, void *obj)
    int omx_pool_untrack(omx_pool *p, void *obj)
    int omx_pool_is_out(const omx_pool *p, const void *obj)
    int omx_pool_push_idle(omx_pool *p, void *obj)
    void *omx_pool_pop_any_idle(omx_pool *p)
    void *omx_pool_pop_any_out(omx_pool *p)

cdef extern from "Python.h":
    ctypedef int (*omx_visitproc "visitproc")(PyObject *, void *) noexcept
    ctypedef int (*omx_traverseproc "traverseproc")(PyObject *, omx_visitproc, void *) noexcept
    ctypedef int (*omx_inquiry "inquiry")(PyObject *) noexcept
    ctypedef struct omx_TypeObject "PyTypeObject":
        omx_traverseproc tp_traverse
        omx_inquiry tp_clear
    void PyType_Modified(omx_TypeObject *)

cdef extern from "ollamamax/pool.h":
    ctypedef struct omx_pool_arrays "omx_pool":
        void **idle
        void **out
        size_t out_mask

__all__ = ["ObjectPool", "PoolInfo"]

cdef str _NOT_OUT = "object was not acquired from this pool or was already released"


cdef class _Lease:
    """``with pool.take() as obj:`` -- acquires on enter, releases on exit."""
    cdef ObjectPool _pool
    cdef object _obj
    cdef bint _active

    def __enter__(self):
        if self._active:
            raise RuntimeError("this take() context is already in use")
        obj = self._pool.acquire()
        self._obj = obj
        self._active = True
        return obj

    def __exit__(self, exc_type, exc, tb):
        obj = self._obj
        self._obj = None
        self._active = False
        self._pool.release(obj)


cdef class ObjectPool:
    """ObjectPool(factory, *, maxsize, reset=None)

    A bounded pool of reusable objects.  ``acquire()`` never blocks; ``release(obj)``
    runs ``reset(obj)`` and keeps the object while fewer than ``maxsize`` are idle."""

    cdef omx_pool _p
    cdef bint _ready
    cdef object _factory
    cdef object _reset
    cdef object __weakref__

    def __cinit__(self):
        self._ready = False

    def __init__(self, factory, *, maxsize, reset=None):
        if self._ready:
            raise RuntimeError("ObjectPool is already initialised")
        if not callable(factory):
            raise TypeError("factory must be callable")
        if reset is not None and not callable(reset):
            raise TypeError("reset must be callable or None")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}")
        if not 0 <= maxsize <= (1 << 40):
            raise ValueError(f"maxsize must be between 0 and 2**40, got {maxsize}")
        if omx_pool_init(&self._p, <size_t>maxsize) != 0:
            raise MemoryError()
        self._ready = True
        self._factory = factory
        self._reset = reset

    def __dealloc__(self):
        cdef void *obj
        if not self._ready:
            return
        self._ready = False
        obj = omx_pool_pop_any_idle(&self._p)
        while obj != NULL:
            Py_DECREF(<object>obj)
            obj = omx_pool_pop_any_idle(&self._p)
        obj = omx_pool_pop_any_out(&self._p)
        while obj != NULL:
            Py_DECREF(<object>obj)
            obj = omx_pool_pop_any_out(&self._p)
        omx_pool_destroy(&self._p)

    cdef inline int _check(self) except -1:
        if not self._ready:
            raise RuntimeError("ObjectPool is not initialised")
        return 0

    @property
    def maxsize(self):
        return self._p.maxsize

    def acquire(self):
        """An idle object, or a new one from ``factory()``.  Never blocks."""
        cdef int dup = 0
        cdef void *ptr
        self._check()
        if omx_pool_reserve(&self._p) != 0:
            raise MemoryError()
        ptr = omx_pool_take_idle(&self._p, &dup)
        if ptr != NULL:
            obj = <object>ptr          # new reference for the caller
            if dup:
                Py_DECREF(obj)         # the idle stack's reference; the set keeps its own
            return obj
        obj = self._factory()
        # the factory may have re-entered the pool: reserve again before inserting
        if omx_pool_reserve(&self._p) != 0:
            raise MemoryError()
        if omx_pool_track_new(&self._p, <void *>obj) != 0:
            raise ValueError("factory returned an object that is already in use")
        Py_INCREF(obj)                 # the outstanding set's reference
        return obj

    def release(self, obj):
        """Give ``obj`` back: ``reset(obj)``, then keep it if there is room.

        ValueError if ``obj`` is not currently acquired from this pool."""
        self._check()
        if not omx_pool_untrack(&self._p, <void *>obj):
            raise ValueError(_NOT_OUT)
        # we now own the set's reference to obj
        if self._reset is not None:
            try:
                self._reset(obj)
            except BaseException:
                Py_DECREF(obj)         # dropped; counters already consistent
                raise
        if not omx_pool_push_idle(&self._p, <void *>obj):
            Py_DECREF(obj)

    def discard(self, obj):
        """Forget an acquired object without keeping it (e.g. a broken connection).

        ValueError if ``obj`` is not currently acquired from this pool."""
        self._check()
        if not omx_pool_untrack(&self._p, <void *>obj):
            raise ValueError(_NOT_OUT)
        Py_DECREF(obj)

    def take(self):
        """Context manager: ``with pool.take() as obj:`` acquires, then releases."""
        cdef _Lease lease = _Lease.__new__(_Lease)
        lease._pool = self
        return lease

    def clear(self):
        """Drop every idle object (objects in use are not affected)."""
        cdef void *ptr
        self._check()
        ptr = omx_pool_pop_any_idle(&self._p)
        while ptr != NULL:
            Py_DECREF(<object>ptr)
            ptr = omx_pool_pop_any_idle(&self._p)

    def stats(self):
        """``PoolInfo(created, reused, idle, in_use, maxsize)``."""
        self._check()
        return PoolInfo(self._p.created, self._p.reused, self._p.nidle, self._p.nout,
                        self._p.maxsize)

    def __len__(self):
        """Number of idle objects."""
        return self._p.nidle

    def __repr__(self):
        return (f"<ollamamax.ObjectPool maxsize={self._p.maxsize} idle={self._p.nidle} "
                f"in_use={self._p.nout}>")


# -- garbage-collector support (see the module docstring) ----------------------------
cdef omx_traverseproc _base_traverse = NULL
cdef omx_inquiry _base_clear = NULL


cdef int _pool_traverse(PyObject *o, omx_visitproc visit, void *arg) noexcept:
    """Visit Cython's attributes, then every idle and outstanding object (one visit
    per stored pointer: each holds one reference).  No reference count changes."""
    cdef int r = _base_traverse(o, visit, arg) if _base_traverse != NULL else 0
    cdef ObjectPool self
    cdef omx_pool_arrays *a
    cdef size_t i
    if r:
        return r
    self = <ObjectPool><void *>o
    if not self._ready:
        return 0
    a = <omx_pool_arrays *>&self._p
    for i in range(self._p.nidle):
        if a.idle[i] != NULL:
            r = visit(<PyObject *>a.idle[i], arg)
            if r:
                return r
    if self._p.nout:
        for i in range(a.out_mask + 1):
            if a.out[i] != NULL:
                r = visit(<PyObject *>a.out[i], arg)
                if r:
                    return r
    return 0


cdef int _pool_clear(PyObject *o) noexcept:
    """Drop every idle and outstanding object (breaking reference cycles), then
    Cython's attributes.  The pool stays consistent: empty, counters kept."""
    cdef ObjectPool self = <ObjectPool><void *>o
    cdef void *ptr
    if self._ready:
        ptr = omx_pool_pop_any_idle(&self._p)
        while ptr != NULL:
            Py_DECREF(<object>ptr)
            ptr = omx_pool_pop_any_idle(&self._p)
        ptr = omx_pool_pop_any_out(&self._p)
        while ptr != NULL:
            Py_DECREF(<object>ptr)
            ptr = omx_pool_pop_any_out(&self._p)
    if _base_clear != NULL:
        return _base_clear(o)
    return 0


cdef _install_gc_hooks():
    global _base_traverse, _base_clear
    cdef omx_TypeObject *t = <omx_TypeObject *><PyObject *>ObjectPool
    _base_traverse = t.tp_traverse
    _base_clear = t.tp_clear
    t.tp_traverse = _pool_traverse
    t.tp_clear = _pool_clear
    PyType_Modified(t)


_install_gc_hooks()

# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Native ``LFUCache``: native/src/lfu.c owns the eviction structure (frequency
sketch, queues of slot indices, per-slot metadata); this wrapper owns the Python
objects: a dict key -> node, where a node (one per slot, created on the slot's
first use and reused) holds the slot's key, value and slot number, so a hit is one
dict lookup and two field reads (key equality is Python equality).  Semantics and
eviction decisions are those of ``ollamamax.structures._lfu_py`` (the specification); see its
docstring.  With a weight budget, inserts and weight changes go through the C calls that
report every slot they freed (``omx_lfu_insert_weighted``/``omx_lfu_update_weighted``);
without one the code paths are those of the unweighted cache."""

cimport cython
from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem, PyDict_DelItem
from cpython.list cimport PyList_GET_ITEM
from cpython.object cimport PyObject_Hash
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t

import time

from ollamamax.structures._lfu_py import CacheInfo, validate_args, validate_weight

cdef extern from "ollamamax/lfu.h":
    ctypedef struct omx_lfu:
        uint32_t maxsize
        uint32_t nslots
        uint64_t shifts
        uint32_t *evicted
        uint64_t maxweight
    uint32_t OMX_LFU_NIL
    uint64_t omx_lfu_spread(uint64_t h)
    int omx_lfu_init(omx_lfu *c, uint32_t maxsize, int track_age, uint64_t maxweight)
    void omx_lfu_destroy(omx_lfu *c)
    void omx_lfu_clear(omx_lfu *c)
    void omx_lfu_record(omx_lfu *c, uint64_t h)
    unsigned omx_lfu_frequency(const omx_lfu *c, uint64_t h)
    void omx_lfu_touch(omx_lfu *c, uint32_t slot)
    void omx_lfu_hit(omx_lfu *c, uint32_t slot)
    void omx_lfu_miss(omx_lfu *c, uint64_t h)
    uint32_t omx_lfu_insert(omx_lfu *c, uint64_t h, double expire, uint32_t *evicted)
    uint32_t omx_lfu_insert_weighted(omx_lfu *c, uint64_t h, double expire, uint64_t weight, uint32_t *slot)
    uint32_t omx_lfu_update_weighted(omx_lfu *c, uint32_t slot, uint64_t weight)
    uint64_t omx_lfu_weight(const omx_lfu *c)
    int omx_lfu_queue_of(const omx_lfu *c, uint32_t slot)
    int omx_lfu_remove(omx_lfu *c, uint32_t slot)
    void omx_lfu_set_expire(omx_lfu *c, uint32_t slot, double expire)
    uint32_t omx_lfu_oldest(const omx_lfu *c)
    uint32_t omx_lfu_size(const omx_lfu *c)
    double omx_lfu_expire_of(const omx_lfu *c, uint32_t slot)

__all__ = ["CacheInfo", "LFUCache"]

cdef object _MISSING = object()
cdef object _NO_KEY = object()   # _last_miss when no get-miss is pending


@cython.final
cdef class _Node:
    """A slot's Python side: its key and value (None while the slot is free)."""
    cdef object key
    cdef object value
    cdef uint32_t slot


@cython.final
cdef class LFUCache:
    """LFUCache(maxsize, *, ttl=None, maxweight=None, timer=time.monotonic)

    A bounded mapping with W-TinyLFU eviction (frequency sketch with aging, small
    LRU window, admission by frequency, shift detection), an optional TTL in
    seconds and an optional weight budget (``set(key, value, weight)``)."""

    cdef omx_lfu _c
    cdef bint _ready
    cdef bint _has_ttl
    cdef bint _weighted
    cdef object _maxweight   # the budget as a Python int (None without one)
    cdef double _ttl
    cdef object _timer
    cdef dict _map          # key -> _Node
    cdef list _nodes        # slot -> _Node or None (never used yet)
    cdef object _last_miss   # key of the latest get-miss, while nothing changed since
    cdef uint64_t _last_h    # its spread hash
    cdef unsigned long long _hits, _misses, _evictions

    def __cinit__(self):
        self._ready = False
        self._last_miss = _NO_KEY

    def __init__(self, maxsize, *, ttl=None, maxweight=None, timer=time.monotonic):
        if self._ready:
            raise RuntimeError("LFUCache is already initialised")
        ttl = validate_args(maxsize, ttl, maxweight)
        if not callable(timer):
            raise TypeError("timer must be callable")
        self._has_ttl = ttl is not None
        self._ttl = ttl if ttl is not None else 0.0
        self._timer = timer
        self._weighted = maxweight is not None
        self._maxweight = maxweight
        rc = omx_lfu_init(&self._c, <uint32_t>maxsize, self._has_ttl,
                          <uint64_t>maxweight if self._weighted else 0)
        if rc == -1:
            raise MemoryError()
        if rc != 0:
            raise ValueError(f"maxsize or maxweight out of range: {maxsize}, {maxweight}")
        self._ready = True
        self._map = {}
        self._nodes = [None] * self._c.nslots
        self._hits = self._misses = self._evictions = 0

    def __dealloc__(self):
        if self._ready:
            self._ready = False
            omx_lfu_destroy(&self._c)

    cdef inline int _check(self) except -1:
        if not self._ready:
            raise RuntimeError("LFUCache is not initialised")
        return 0

    @property
    def maxsize(self):
        return self._c.maxsize

    @property
    def ttl(self):
        return self._ttl if self._has_ttl else None

    @property
    def maxweight(self):
        return self._c.maxweight if self._weighted else None

    @property
    def _shifts(self):
        """Hot-set shifts detected so far (for tests and diagnostics)."""
        return self._c.shifts

    # -- internals ------------------------------------------------------------------
    cdef inline _Node _node(self, uint32_t slot):
        return <_Node>PyList_GET_ITEM(self._nodes, slot)

    cdef inline bint _expired(self, uint32_t slot) except -1:
        return self._has_ttl and omx_lfu_expire_of(&self._c, slot) <= <double>self._timer()

    cdef int _drop(self, _Node node) except -1:
        """Remove a resident node; its key and value die when this returns."""
        self._last_miss = _NO_KEY
        key = node.key
        value = node.value
        omx_lfu_remove(&self._c, node.slot)
        node.key = None
        node.value = None
        PyDict_DelItem(self._map, key)
        self._last_miss = _NO_KEY
        return 0

    cdef int _purge(self) except -1:
        cdef uint32_t s
        cdef double now
        if not self._has_ttl:
            return 0
        s = omx_lfu_oldest(&self._c)
        if s == OMX_LFU_NIL:
            return 0
        now = self._timer()
        while s != OMX_LFU_NIL and omx_lfu_expire_of(&self._c, s) <= now:
            self._drop(self._node(s))
            s = omx_lfu_oldest(&self._c)
        return 0

    cdef int _insert(self, object key, object value, uint64_t h) except -1:
        cdef uint32_t ev = OMX_LFU_NIL
        cdef uint32_t slot
        cdef double expire = 0.0
        cdef _Node node
        cdef _Node evnode
        self._last_miss = _NO_KEY
        if self._has_ttl:
            self._purge()
            expire = <double>self._timer() + self._ttl
        slot = omx_lfu_insert(&self._c, h, expire, &ev)
        if slot == OMX_LFU_NIL:
            raise RuntimeError("LFUCache: no free slot (the cache was modified re-entrantly)")
        node = self._node(slot)
        if node is None:
            node = _Node.__new__(_Node)
            node.slot = slot
            self._nodes[slot] = node
        node.key = key
        node.value = value
        evkey = evvalue = None         # released when this function returns
        if ev != OMX_LFU_NIL:
            self._evictions += 1
            evnode = self._node(ev)
            evkey = evnode.key
            evvalue = evnode.value
            evnode.key = None
            evnode.value = None
        try:
            PyDict_SetItem(self._map, key, node)
        except BaseException:
            # a key whose __eq__ raised: undo the insertion, keep the eviction
            omx_lfu_remove(&self._c, slot)
            node.key = None
            node.value = None
            if ev != OMX_LFU_NIL:
                PyDict_DelItem(self._map, evkey)
            raise
        if ev != OMX_LFU_NIL:
            PyDict_DelItem(self._map, evkey)
        self._last_miss = _NO_KEY   # again: the dict calls may have run Python code
        return 0

    cdef int _release_evicted(self, uint32_t n, uint32_t keep) except -1:
        """Weighted: drop the keys of the n slots the last C call freed (``c.evicted``),
        except ``keep`` (a new slot whose key is not in the dict yet).  The keys and
        values die when this returns, after the dict is consistent."""
        cdef uint32_t i, ev
        cdef _Node evnode
        cdef list gone
        if n == 0:
            return 0
        self._last_miss = _NO_KEY
        if n == 1:  # the common case, without the list
            ev = self._c.evicted[0]
            evnode = self._node(ev)
            evkey = evnode.key
            evvalue = evnode.value
            evnode.key = None
            evnode.value = None
            if ev != keep:
                self._evictions += 1
                PyDict_DelItem(self._map, evkey)
            self._last_miss = _NO_KEY
            return 0
        gone = []
        for i in range(n):
            ev = self._c.evicted[i]
            evnode = self._node(ev)
            gone.append((evnode.key, evnode.value))
            evnode.key = None
            evnode.value = None
            if ev != keep:
                self._evictions += 1
        for i in range(n):
            if self._c.evicted[i] != keep:
                PyDict_DelItem(self._map, gone[i][0])
        self._last_miss = _NO_KEY   # the dict calls may have run Python code
        return 0

    cdef int _insert_weighted(self, object key, object value, uint64_t h, uint64_t weight) except -1:
        cdef uint32_t slot = OMX_LFU_NIL
        cdef uint32_t n, i
        cdef double expire = 0.0
        cdef bint kept = True
        cdef _Node node
        self._last_miss = _NO_KEY
        if self._has_ttl:
            self._purge()
            expire = <double>self._timer() + self._ttl
        n = omx_lfu_insert_weighted(&self._c, h, expire, weight, &slot)
        if slot == OMX_LFU_NIL:
            raise RuntimeError("LFUCache: no free slot (the cache was modified re-entrantly)")
        node = self._node(slot)
        if node is None:
            node = _Node.__new__(_Node)
            node.slot = slot
            self._nodes[slot] = node
        for i in range(n):
            if self._c.evicted[i] == slot:
                kept = False    # the new entry lost its admission contest
                self._evictions += 1
        if kept:
            node.key = key
            node.value = value
            try:
                PyDict_SetItem(self._map, key, node)
            except BaseException:
                # a key whose __eq__ raised: undo the insertion, keep the evictions
                omx_lfu_remove(&self._c, slot)
                node.key = None
                node.value = None
                self._release_evicted(n, slot)
                raise
        self._release_evicted(n, slot)
        return 0

    cdef int _update_weighted(self, _Node node, object value, uint64_t weight) except -1:
        cdef uint32_t slot = node.slot
        cdef uint32_t n = omx_lfu_update_weighted(&self._c, slot, weight)
        if omx_lfu_queue_of(&self._c, slot) != 0:   # still resident
            if self._has_ttl:
                omx_lfu_set_expire(&self._c, slot, <double>self._timer() + self._ttl)
            old = node.value        # the old value is released last
            node.value = value
        self._release_evicted(n, OMX_LFU_NIL)
        return 0

    cdef int _set_weighted(self, object key, object value, object weight) except -1:
        cdef PyObject *sp
        cdef _Node node
        cdef object w = weight
        if type(w) is not int or w < 1:
            w = validate_weight(w, self._maxweight)
        if w > self._maxweight:   # heavier than the whole budget: not admitted
            sp = PyDict_GetItemWithError(self._map, key)
            if sp != NULL:
                self._drop(<_Node>sp)
            return 0
        if key is self._last_miss:
            return self._insert_weighted(key, value, self._last_h, <uint64_t>w)
        sp = PyDict_GetItemWithError(self._map, key)
        if sp != NULL:
            node = <_Node>sp
            if not self._has_ttl or not self._expired(node.slot):
                return self._update_weighted(node, value, <uint64_t>w)
            self._drop(node)
        return self._insert_weighted(key, value, omx_lfu_spread(<uint64_t>PyObject_Hash(key)), <uint64_t>w)

    cdef inline int _miss(self, object key) except -1:
        self._misses += 1
        cdef uint64_t h = omx_lfu_spread(<uint64_t>PyObject_Hash(key))
        omx_lfu_miss(&self._c, h)
        self._last_miss = key
        self._last_h = h
        return 0

    # -- lookups --------------------------------------------------------------------
    def get(self, key, default=None):
        """The value for ``key`` (a use: counted as hit or miss), or ``default``."""
        # the dict lookup raises TypeError for an unhashable key; a hit needs no
        # hash of ours (the slot keeps it), a miss hashes again (cached for str)
        cdef PyObject *sp = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if sp != NULL:
            node = <_Node>sp
            if not self._has_ttl or not self._expired(node.slot):
                self._hits += 1
                omx_lfu_hit(&self._c, node.slot)
                return node.value
            self._drop(node)
        self._miss(key)
        return default

    def __getitem__(self, key):
        cdef PyObject *sp = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if sp != NULL:
            node = <_Node>sp
            if not self._has_ttl or not self._expired(node.slot):
                self._hits += 1
                omx_lfu_hit(&self._c, node.slot)
                return node.value
            self._drop(node)
        self._miss(key)
        raise KeyError(key)

    def __contains__(self, key):
        """Membership test; not a use (no counters, no reordering)."""
        cdef PyObject *sp = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if sp == NULL:
            return False
        node = <_Node>sp
        if self._has_ttl and self._expired(node.slot):
            self._drop(node)
            return False
        return True

    # -- updates --------------------------------------------------------------------
    def set(self, key, value, weight=1):
        """Insert or replace ``key`` (counts as a use of ``key``); may evict entries.

        ``weight`` (1..``maxweight``; only 1 without a weight budget) is the entry's share
        of ``maxweight``.  A weight above ``maxweight`` stores nothing and removes ``key``."""
        if self._weighted:
            self._set_weighted(key, value, weight)
        else:
            if type(weight) is not int or weight != 1:
                validate_weight(weight, None)
            self._set(key, value)

    def __setitem__(self, key, value):
        if self._weighted:
            self._set_weighted(key, value, 1)
        else:
            self._set(key, value)

    cdef int _set(self, object key, object value) except -1:
        cdef PyObject *sp
        cdef _Node node
        if key is self._last_miss:
            # the get-or-set pattern: this very key missed and nothing was inserted
            # or removed since, so it is absent; skip the second dict lookup
            return self._insert(key, value, self._last_h)
        sp = PyDict_GetItemWithError(self._map, key)
        if sp != NULL:
            node = <_Node>sp
            if not self._has_ttl or not self._expired(node.slot):
                omx_lfu_touch(&self._c, node.slot)
                if self._has_ttl:
                    omx_lfu_set_expire(&self._c, node.slot, <double>self._timer() + self._ttl)
                old = node.value        # the old value is released last
                node.value = value
                return 0
            self._drop(node)
        return self._insert(key, value, omx_lfu_spread(<uint64_t>PyObject_Hash(key)))

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value; ``default`` (or KeyError) if absent."""
        cdef PyObject *sp = PyDict_GetItemWithError(self._map, key)
        cdef _Node node
        if sp != NULL:
            node = <_Node>sp
            value = node.value
            expired = self._has_ttl and self._expired(node.slot)
            self._drop(node)
            if not expired:
                return value
        if default is _MISSING:
            raise KeyError(key)
        return default

    def __delitem__(self, key):
        self.pop(key)

    def clear(self):
        """Drop every entry and reset the frequency sketch and the counters."""
        self._check()
        old = (self._map, self._nodes)   # released last
        self._last_miss = _NO_KEY
        omx_lfu_clear(&self._c)
        self._map = {}
        self._nodes = [None] * self._c.nslots
        self._hits = self._misses = self._evictions = 0

    # -- introspection --------------------------------------------------------------
    def __len__(self):
        self._purge()
        return omx_lfu_size(&self._c)

    def stats(self):
        """``CacheInfo(hits, misses, evictions, maxsize, currsize)``, with ``maxweight`` and
        ``currweight`` as attributes."""
        self._check()
        self._purge()
        if not self._weighted:
            return CacheInfo(self._hits, self._misses, self._evictions, self._c.maxsize,
                             omx_lfu_size(&self._c))
        return CacheInfo(self._hits, self._misses, self._evictions, self._c.maxsize,
                         omx_lfu_size(&self._c), self._c.maxweight, omx_lfu_weight(&self._c))

    def frequency(self, key):
        """The sketch's estimate (0..31) of how often ``key`` was used recently."""
        self._check()
        return omx_lfu_frequency(&self._c, omx_lfu_spread(<uint64_t>PyObject_Hash(key)))

    def __repr__(self):
        weights = (f" maxweight={self._c.maxweight} currweight={omx_lfu_weight(&self._c)}"
                   if self._weighted else "")
        return (f"<ollamamax.structures._lfu_c.LFUCache maxsize={self._c.maxsize} "
                f"currsize={omx_lfu_size(&self._c)}{weights} ttl={self.ttl}>")

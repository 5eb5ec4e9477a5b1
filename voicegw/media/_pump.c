/*
 * voicegw.media._pump: batched reads of every media socket of an event loop, and the
 * same-codec relay step for the common packet, without a Python call per packet.
 *
 * Why C: on these machines a relayed RTP packet cost about 24 us of CPU through the
 * event loop (one wake-up, one callback, one Python frame per datagram), of which the
 * protocol work is 2-4 us. Here one epoll_wait and one recvmmsg per ready socket take
 * everything queued, and the common packet -- from the latched source, a negotiated
 * audio payload type, the current SSRC, relayed to a peer that already relays this
 * SSRC -- is accounted and sent on without leaving C.
 *
 * The Python objects stay the only state. The step reads and writes the very fields
 * MediaLeg.receive, ReceiverStats.on_packet and RtpSender.relay use (it is a
 * transliteration of their common case; tests/media/test_pump.py runs both on the
 * same packets and compares every field), so there is nothing to synchronise: a
 * packet the step does not take is returned untouched, and Python handles it exactly
 * as before. Once one packet of a socket is returned in a poll, the rest of that
 * socket's packets in the poll are returned too, so a leg's packets keep their order.
 *
 * The step calls no Python code: plain attribute reads and writes on objects whose
 * classes define no properties for those names, and, for a tapped leg, the C jitter
 * buffer's push_rtp.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY: how __slots__ members are described */

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "_rtp_view.h"

#define BATCH 32          /* datagrams per recvmmsg */
#define ROUNDS 4          /* recvmmsg calls per ready socket and poll: fairness */
#define MAX_EVENTS 512    /* ready sockets per epoll_wait */
#define BUF_SIZE 4096     /* RTP over UDP never comes near; longer is dropped as truncated */

#define MAX_DROPOUT 3000
#define MAX_MISORDER 100
#define SEQ_MOD 65536

/* ---- interned attribute names ------------------------------------------------- */

static PyObject *s_srtp, *s_leg, *s_source, *s_codecs, *s_receiver, *s_ssrc, *s_started,
    *s_probation, *s_max_seq, *s_cycles, *s_received, *s_jitter_est, *s_last_transit,
    *s_clock_rate, *s_relay, *s_peer, *s_closed, *s_held, *s_fd, *s_config, *s_remote_rtp,
    *s_name, *s_send_pt_by_codec, *s_sender, *s_relay_ssrc, *s_seq_offset, *s_ts_offset,
    *s_seq, *s_ts, *s_last_send, *s_stats, *s_packet_count, *s_octet_count,
    *s_sent_since_report, *s_last_received, *s_rx_codec, *s_jitter_buffer,
    *s_socket_errors, *s_push_rtp;

static int intern_names(void) {
#define NAME(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    NAME(s_srtp, "srtp")
    NAME(s_leg, "leg")
    NAME(s_source, "_source")
    NAME(s_codecs, "_codecs")
    NAME(s_receiver, "_receiver")
    NAME(s_ssrc, "ssrc")
    NAME(s_started, "_started")
    NAME(s_probation, "_probation")
    NAME(s_max_seq, "_max_seq")
    NAME(s_cycles, "_cycles")
    NAME(s_received, "_received")
    NAME(s_jitter_est, "_jitter")
    NAME(s_last_transit, "_last_transit")
    NAME(s_clock_rate, "clock_rate")
    NAME(s_relay, "_relay")
    NAME(s_peer, "peer")
    NAME(s_closed, "_closed")
    NAME(s_held, "held")
    NAME(s_fd, "_fd")
    NAME(s_config, "config")
    NAME(s_remote_rtp, "remote_rtp")
    NAME(s_name, "name")
    NAME(s_send_pt_by_codec, "_send_pt_by_codec")
    NAME(s_sender, "sender")
    NAME(s_relay_ssrc, "_relay_ssrc")
    NAME(s_seq_offset, "_seq_offset")
    NAME(s_ts_offset, "_ts_offset")
    NAME(s_seq, "_seq")
    NAME(s_ts, "_ts")
    NAME(s_last_send, "_last_send")
    NAME(s_stats, "stats")
    NAME(s_packet_count, "packet_count")
    NAME(s_octet_count, "octet_count")
    NAME(s_sent_since_report, "_sent_since_report")
    NAME(s_last_received, "last_received")
    NAME(s_rx_codec, "_rx_codec")
    NAME(s_jitter_buffer, "_jitter")
    NAME(s_socket_errors, "socket_errors")
    NAME(s_push_rtp, "push_rtp")
#undef NAME
    return 0;
}

/* ---- small helpers over Python objects ----------------------------------------- */

/*
 * Attribute access through per-call-site caches. Every object the step touches per
 * packet but two (the leg and its transport) is an instance of a class with __slots__;
 * for those, the cache remembers the slot's offset for the object's type and reads or
 * writes the slot directly, as the member descriptor would, without the type lookup and
 * descriptor call of PyObject_GetAttr (at 800 legs these accesses were a fifth of the
 * CPU). Anything else (a plain instance attribute, a property) takes the generic path.
 * Each call site has its own cache (the macros below), so one site sees one type.
 */
typedef struct {
    PyObject **name;     /* the interned name's variable */
    PyTypeObject *type;  /* strong reference: the type the offset was found for */
    Py_ssize_t offset;   /* > 0: the slot's offset in instances of ``type``; 0: generic */
} Site;

static Py_ssize_t site_offset(Site *site, PyObject *obj) {
    PyTypeObject *type = Py_TYPE(obj);
    if (site->type != type) {
        Py_INCREF(type);
        Py_XSETREF(site->type, type);
        site->offset = 0;
        PyObject *descr = _PyType_Lookup(type, *site->name); /* borrowed */
        /* Only where both lookups are the generic ones (no __getattribute__, __setattr__,
           as a frozen dataclass has: its slots are only read here). */
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type) &&
            type->tp_getattro == PyObject_GenericGetAttr) {
            PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == T_OBJECT_EX && !(member->flags & READONLY))
                site->offset = member->offset;
        }
    }
    return site->offset;
}

/* A new reference to obj.name, or NULL with no exception set when it is missing. */
static PyObject *get_at(Site *site, PyObject *obj) {
    Py_ssize_t offset = site_offset(site, obj);
    if (offset > 0) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        Py_XINCREF(value);
        return value;
    }
    PyObject *value = PyObject_GetAttr(obj, *site->name);
    if (value == NULL)
        PyErr_Clear();
    return value;
}

/* obj.name = value, taking the reference to ``value`` (NULL: a failed allocation). */
static int set_at(Site *site, PyObject *obj, PyObject *value) {
    if (value == NULL)
        return -1;
    Py_ssize_t offset = site_offset(site, obj);
    if (offset > 0 && Py_TYPE(obj)->tp_setattro == PyObject_GenericSetAttr) {
        PyObject **slot = (PyObject **)((char *)obj + offset);
        PyObject *old = *slot;
        *slot = value;
        Py_XDECREF(old); /* an int or a float: no code runs */
        return 0;
    }
    int rc = PyObject_SetAttr(obj, *site->name, value);
    Py_DECREF(value);
    return rc;
}

#define get(obj, name)                             \
    __extension__({                                \
        static Site site_ = {&(name), NULL, 0};    \
        get_at(&site_, (obj));                     \
    })
#define set_owned(obj, name, value)                \
    __extension__({                                \
        static Site site_ = {&(name), NULL, 0};    \
        set_at(&site_, (obj), (value));            \
    })

/* ``value`` (a new reference, or NULL) as an integer in [0, 2**64); -1 if it is not one. */
static int u64_of(PyObject *value, uint64_t *out) {
    if (value == NULL || !PyLong_CheckExact(value)) {
        Py_XDECREF(value);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(value);
    Py_DECREF(value);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

static int i64_of(PyObject *value, int64_t *out) {
    if (value == NULL || !PyLong_CheckExact(value)) {
        Py_XDECREF(value);
        return -1;
    }
    long long v = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (v == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    *out = v;
    return 0;
}

/* ``value`` as a float, or *is_none set when it is None; -1 otherwise. */
static int opt_double_of(PyObject *value, double *out, int *is_none) {
    if (value == NULL)
        return -1;
    *is_none = value == Py_None;
    int ok = *is_none || PyFloat_CheckExact(value);
    if (ok && !*is_none)
        *out = PyFloat_AS_DOUBLE(value);
    Py_DECREF(value);
    return ok ? 0 : -1;
}

/* 1 true, 0 false, -1 missing. */
static int bool_of(PyObject *value) {
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (truth < 0) {
        PyErr_Clear();
        return -1;
    }
    return truth;
}

#define get_u64(obj, name, out) u64_of(get(obj, name), (out))
#define get_i64(obj, name, out) i64_of(get(obj, name), (out))
#define get_opt_double(obj, name, out, is_none) opt_double_of(get(obj, name), (out), (is_none))
#define get_bool(obj, name) bool_of(get(obj, name))
#define set_u64(obj, name, v) set_owned(obj, name, PyLong_FromUnsignedLongLong(v))
#define set_double(obj, name, v) set_owned(obj, name, PyFloat_FromDouble(v))
#define set_bool(obj, name, v) set_owned(obj, name, Py_NewRef((v) ? Py_True : Py_False))

/* ---- addresses ------------------------------------------------------------------ */

/* An (host, port) tuple parsed once and remembered by identity (tuples are immutable). */
typedef struct {
    PyObject *tuple; /* strong reference, or NULL */
    struct sockaddr_storage addr;
    socklen_t len;
    int valid;
} AddrCache;

static void addr_cache_clear(AddrCache *cache) {
    Py_CLEAR(cache->tuple);
    cache->valid = 0;
}

/* The sockaddr for ``tuple``; NULL when it is not a numeric (host, port). */
static const struct sockaddr_storage *addr_of(AddrCache *cache, PyObject *tuple, socklen_t *len) {
    if (cache->tuple != tuple) {
        addr_cache_clear(cache);
        Py_INCREF(tuple);
        cache->tuple = tuple;
        memset(&cache->addr, 0, sizeof cache->addr);
        if (PyTuple_CheckExact(tuple) && PyTuple_GET_SIZE(tuple) >= 2 &&
            PyUnicode_Check(PyTuple_GET_ITEM(tuple, 0)) &&
            PyLong_CheckExact(PyTuple_GET_ITEM(tuple, 1))) {
            const char *host = PyUnicode_AsUTF8(PyTuple_GET_ITEM(tuple, 0));
            long port = PyLong_AsLong(PyTuple_GET_ITEM(tuple, 1));
            if (host == NULL || (port == -1 && PyErr_Occurred())) {
                PyErr_Clear();
            } else if (port >= 0 && port <= 65535) {
                struct sockaddr_in *v4 = (struct sockaddr_in *)&cache->addr;
                struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&cache->addr;
                if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
                    v4->sin_family = AF_INET;
                    v4->sin_port = htons((uint16_t)port);
                    cache->len = sizeof *v4;
                    cache->valid = 1;
                } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
                    v6->sin6_family = AF_INET6;
                    v6->sin6_port = htons((uint16_t)port);
                    cache->len = sizeof *v6;
                    cache->valid = 1;
                }
            }
        }
    }
    if (!cache->valid)
        return NULL;
    *len = cache->len;
    return &cache->addr;
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
        return x->sin6_port == y->sin6_port &&
               memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
    }
    return 0;
}

/* (host, port) as Python's socket module gives it for these families. */
static PyObject *addr_tuple(const struct sockaddr_storage *addr) {
    char host[INET6_ADDRSTRLEN];
    int port;
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const void *)addr;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
    } else if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const void *)addr;
        inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
        port = ntohs(v6->sin6_port);
    } else {
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(si)", host, port);
}

/* ---- the pump -------------------------------------------------------------------- */

typedef struct {
    int fd;           /* -1: free slot */
    uint32_t gen;     /* bumped on reuse, so a stale epoll event is recognised */
    PyObject *owner;  /* the LegTransport */
    int rtcp;         /* an RTCP-only socket: everything goes to Python */
    AddrCache source; /* owner.leg._source */
    AddrCache dest;   /* the peer's destination */
    uint64_t mark;    /* poll number in which a packet of this socket went to Python */
} Entry;

typedef struct {
    PyObject_HEAD int epfd;
    Entry *entries;
    Py_ssize_t size; /* slots in use or freed */
    Py_ssize_t cap;
    uint64_t polls, datagrams, relayed, returned, truncated, send_errors, tap_errors;
    int step; /* the relay step on (1) or everything to Python (0: comparison, tests) */
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_storage from[BATCH];
    unsigned char (*bufs)[BUF_SIZE];
    unsigned char out[BUF_SIZE];
    struct epoll_event events[MAX_EVENTS];
} Pump;

static int Pump_init(Pump *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (self->epfd < 0) {
        self->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (self->epfd < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
    }
    self->step = 1;
    if (self->bufs == NULL) {
        self->bufs = PyMem_Calloc(BATCH, BUF_SIZE);
        if (self->bufs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static PyObject *Pump_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Pump *self = (Pump *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->epfd = -1;
    return (PyObject *)self;
}

static void entry_clear(Entry *e) {
    Py_CLEAR(e->owner);
    addr_cache_clear(&e->source);
    addr_cache_clear(&e->dest);
    e->fd = -1;
}

static int Pump_traverse(Pump *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Py_VISIT(self->entries[i].owner);
        Py_VISIT(self->entries[i].source.tuple);
        Py_VISIT(self->entries[i].dest.tuple);
    }
    return 0;
}

static int Pump_clear(Pump *self) {
    for (Py_ssize_t i = 0; i < self->size; i++)
        entry_clear(&self->entries[i]);
    return 0;
}

static void Pump_dealloc(Pump *self) {
    PyObject_GC_UnTrack(self);
    Pump_clear(self);
    PyMem_Free(self->entries);
    PyMem_Free(self->bufs);
    if (self->epfd >= 0)
        close(self->epfd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Pump_fileno(Pump *self, PyObject *unused) {
    return PyLong_FromLong(self->epfd);
}

static PyObject *Pump_register(Pump *self, PyObject *args) {
    int fd, rtcp;
    PyObject *owner;
    if (!PyArg_ParseTuple(args, "iOp", &fd, &owner, &rtcp))
        return NULL;
    Py_ssize_t slot = -1;
    for (Py_ssize_t i = 0; i < self->size; i++)
        if (self->entries[i].fd < 0) {
            slot = i;
            break;
        }
    if (slot < 0) {
        if (self->size == self->cap) {
            Py_ssize_t cap = self->cap ? 2 * self->cap : 64;
            Entry *grown = PyMem_Realloc(self->entries, cap * sizeof(Entry));
            if (grown == NULL)
                return PyErr_NoMemory();
            memset(grown + self->cap, 0, (cap - self->cap) * sizeof(Entry));
            self->entries = grown;
            self->cap = cap;
        }
        slot = self->size++;
        self->entries[slot].fd = -1;
    }
    Entry *e = &self->entries[slot];
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.u64 = ((uint64_t)(e->gen + 1) << 32) | (uint64_t)slot;
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    e->gen++;
    e->fd = fd;
    e->rtcp = rtcp;
    e->mark = 0;
    Py_INCREF(owner);
    e->owner = owner;
    return PyLong_FromSsize_t(slot);
}

static PyObject *Pump_unregister(Pump *self, PyObject *arg) {
    Py_ssize_t slot = PyLong_AsSsize_t(arg);
    if (slot == -1 && PyErr_Occurred())
        return NULL;
    if (slot < 0 || slot >= self->size || self->entries[slot].fd < 0) {
        PyErr_SetString(PyExc_ValueError, "no socket is registered in that slot");
        return NULL;
    }
    Entry *e = &self->entries[slot];
    /* The socket may already be closed (then the kernel dropped it from the set). */
    epoll_ctl(self->epfd, EPOLL_CTL_DEL, e->fd, NULL);
    entry_clear(e);
    Py_RETURN_NONE;
}

/* What the relay step needs of the peer, read before anything is changed. */
typedef struct {
    PyObject *peer;   /* borrowed from the caller's references below */
    PyObject *sender;
    PyObject *stats;
    int fd;
    const struct sockaddr_storage *dest;
    socklen_t dest_len;
    uint64_t out_pt, out_ssrc, seq_offset, ts_offset, s_seq, packet_count, octet_count;
    double last_send;
    int last_send_none;
} RelayPlan;

/*
 * The fast step for one datagram on entry ``e``: 1 taken, 0 leave it to Python
 * (nothing was changed), -1 a Python error.
 */
static int step(Pump *self, Entry *e, const unsigned char *d, size_t n,
                const struct sockaddr_storage *from, double now) {
    RtpView rtp;
    /* RTCP (RFC 5761 §4: types 192-223 where RTP has M+PT) and malformed RTP are Python's. */
    if (e->rtcp || n < 2 || (d[1] >= 192 && d[1] <= 223) || rtp_view(d, n, &rtp) != NULL)
        return 0;
    size_t pos = rtp.payload_start, end = rtp.payload_end;
    unsigned pt = rtp.payload_type, marker = rtp.marker;
    uint32_t seq = rtp.seq, ts = rtp.timestamp, ssrc = rtp.ssrc;

    int result = 0;
    PyObject *owner = e->owner, *leg = NULL, *source = NULL, *codecs = NULL, *receiver = NULL,
             *jitter = NULL, *peer = NULL, *peer_leg = NULL, *dest_tuple = NULL,
             *peer_config = NULL, *name = NULL, *pt_map = NULL, *sender = NULL,
             *stats = NULL, *srtp = NULL, *pt_key = NULL;
    PyObject *codec; /* borrowed from the codecs dict */

    /* -- may we take it? (nothing changes until every check passed) -- */
    srtp = get(owner, s_srtp);
    if (srtp != Py_None)
        goto done;
    if ((leg = get(owner, s_leg)) == NULL)
        goto done;
    source = get(leg, s_source);
    socklen_t len;
    if (source == NULL || source == Py_None)
        goto done;
    const struct sockaddr_storage *latched = addr_of(&e->source, source, &len);
    if (latched == NULL || !same_addr(latched, from))
        goto done;
    codecs = get(leg, s_codecs);
    if (codecs == NULL || !PyDict_CheckExact(codecs))
        goto done;
    pt_key = PyLong_FromLong(pt);
    codec = PyDict_GetItemWithError(codecs, pt_key);
    if (codec == NULL) {
        PyErr_Clear();
        goto done; /* telephone-event, or a payload type not negotiated */
    }
    receiver = get(leg, s_receiver);
    if (receiver == NULL || receiver == Py_None)
        goto done;
    uint64_t r_ssrc, probation, max_seq, cycles, received, clock_rate;
    if (get_u64(receiver, s_ssrc, &r_ssrc) || r_ssrc != ssrc)
        goto done; /* a new source: SsrcChanged is Python's */
    if (get_bool(receiver, s_started) != 1 || get_u64(receiver, s_probation, &probation) ||
        probation != 0)
        goto done;
    if (get_u64(receiver, s_max_seq, &max_seq) || get_u64(receiver, s_cycles, &cycles) ||
        get_u64(receiver, s_received, &received) || get_u64(receiver, s_clock_rate, &clock_rate))
        goto done;
    double jit, last_transit;
    int jit_none, transit_none;
    if (get_opt_double(receiver, s_jitter_est, &jit, &jit_none) || jit_none ||
        get_opt_double(receiver, s_last_transit, &last_transit, &transit_none))
        goto done;
    uint32_t udelta = (seq - (uint32_t)max_seq) & 0xFFFF;
    if (udelta >= MAX_DROPOUT && udelta <= SEQ_MOD - MAX_MISORDER)
        goto done; /* a jump: possibly a restart, A.1's bad_seq logic is Python's */
    if ((jitter = get(leg, s_jitter_buffer)) == NULL)
        goto done;
    int relay = get_bool(leg, s_relay);
    if (relay < 0)
        goto done;

    RelayPlan plan;
    if (relay) {
        peer = get(owner, s_peer);
        if (peer == NULL || peer == Py_None)
            goto done; /* audio for on_event */
        Py_XDECREF(srtp);
        srtp = get(peer, s_srtp);
        if (srtp != Py_None || get_bool(peer, s_closed) != 0)
            goto done;
        if (get_bool(peer, s_held) == 1)
            goto done; /* counted by send_rtp */
        int64_t fd;
        if (get_i64(peer, s_fd, &fd) || fd < 0)
            goto done;
        plan.fd = (int)fd;
        if ((peer_leg = get(peer, s_leg)) == NULL)
            goto done;
        dest_tuple = get(peer_leg, s_source);
        if (dest_tuple == Py_None) {
            Py_DECREF(dest_tuple);
            if ((peer_config = get(peer_leg, s_config)) == NULL)
                goto done;
            dest_tuple = get(peer_config, s_remote_rtp);
        }
        if (dest_tuple == NULL || dest_tuple == Py_None)
            goto done; /* nowhere to send yet: send_rtp counts it */
        plan.dest = addr_of(&e->dest, dest_tuple, &plan.dest_len);
        if (plan.dest == NULL)
            goto done;
        if ((name = get(codec, s_name)) == NULL || (pt_map = get(peer_leg, s_send_pt_by_codec)) == NULL ||
            !PyDict_CheckExact(pt_map))
            goto done;
        PyObject *out_pt = PyDict_GetItemWithError(pt_map, name);
        if (out_pt == NULL || !PyLong_CheckExact(out_pt)) {
            PyErr_Clear();
            goto done; /* not negotiated there: transcoding is Python's */
        }
        plan.out_pt = PyLong_AsUnsignedLongLong(out_pt);
        if (PyErr_Occurred() || plan.out_pt > 127) {
            PyErr_Clear();
            goto done;
        }
        if ((sender = get(peer_leg, s_sender)) == NULL || (stats = get(sender, s_stats)) == NULL)
            goto done;
        uint64_t relay_ssrc;
        if (get_u64(sender, s_relay_ssrc, &relay_ssrc) || relay_ssrc != ssrc)
            goto done; /* a new relayed source: rebasing is Python's */
        if (get_u64(sender, s_seq_offset, &plan.seq_offset) ||
            get_u64(sender, s_ts_offset, &plan.ts_offset) || get_u64(sender, s_seq, &plan.s_seq) ||
            get_u64(sender, s_ssrc, &plan.out_ssrc) ||
            get_opt_double(sender, s_last_send, &plan.last_send, &plan.last_send_none) ||
            get_u64(stats, s_packet_count, &plan.packet_count) ||
            get_u64(stats, s_octet_count, &plan.octet_count))
            goto done;
        if (end - pos + 12 > sizeof self->out)
            goto done;
    }

    /* -- take it: ReceiverStats.on_packet, MediaLeg.receive -- */
    result = -1;
    if (udelta < MAX_DROPOUT) {
        if (seq < max_seq && set_u64(receiver, s_cycles, cycles + SEQ_MOD))
            goto done;
        if (set_u64(receiver, s_max_seq, seq))
            goto done;
    } /* else a duplicate or a reordered packet, counted as received (A.1) */
    if (set_u64(receiver, s_received, received + 1))
        goto done;
    /* A.8, as ReceiverStats._update_jitter computes it, to the bit. */
    double transit = now * (double)clock_rate - (double)ts;
    if (set_double(receiver, s_last_transit, transit))
        goto done;
    if (!transit_none) {
        double dd = transit - last_transit + 2147483648.0;
        double m = fmod(dd, 4294967296.0);
        if (m != 0 && m < 0)
            m += 4294967296.0;
        dd = m - 2147483648.0;
        if (set_double(receiver, s_jitter_est, jit + (fabs(dd) - jit) / 16.0))
            goto done;
    }
    if (set_double(leg, s_last_received, now) || set_owned(leg, s_rx_codec, Py_NewRef(codec)))
        goto done;
    if (jitter != Py_None) {
        /* A tap wants PCM. The buffer (jitter.JitterBuffer, C too) parses it again: cheaper
           than handing over the fields. It has seen valid RTP only, so it cannot fail but
           for memory; a failure is counted and the packet still relayed. */
        PyObject *data = PyBytes_FromStringAndSize((const char *)d, (Py_ssize_t)n);
        PyObject *when = PyFloat_FromDouble(now);
        PyObject *pushed = data == NULL || when == NULL
                               ? NULL
                               : PyObject_CallMethodObjArgs(jitter, s_push_rtp, data, when, NULL);
        Py_XDECREF(data);
        Py_XDECREF(when);
        if (pushed == NULL) {
            PyErr_Clear();
            self->tap_errors++;
        }
        Py_XDECREF(pushed);
    }
    if (relay) {
        /* RtpSender.relay for a packet of the source it already relays, then send_rtp. */
        uint32_t out_seq = (uint32_t)((seq + plan.seq_offset) & 0xFFFF);
        uint32_t out_ts = (uint32_t)((ts + plan.ts_offset) & 0xFFFFFFFFu);
        uint32_t ahead = (out_seq - (uint32_t)plan.s_seq) & 0xFFFF;
        if (plan.last_send_none || (ahead > 0 && ahead < 0x8000)) {
            if (set_u64(sender, s_seq, out_seq) || set_u64(sender, s_ts, out_ts) ||
                set_double(sender, s_last_send, now))
                goto done;
        }
        size_t payload = end - pos;
        if (set_u64(stats, s_packet_count, plan.packet_count + 1) ||
            set_u64(stats, s_octet_count, plan.octet_count + payload) ||
            set_bool(sender, s_sent_since_report, 1))
            goto done;
        unsigned char *o = self->out;
        o[0] = 0x80;
        o[1] = (unsigned char)(plan.out_pt | (marker << 7));
        o[2] = out_seq >> 8, o[3] = out_seq & 0xFF;
        o[4] = out_ts >> 24, o[5] = (out_ts >> 16) & 0xFF, o[6] = (out_ts >> 8) & 0xFF,
        o[7] = out_ts & 0xFF;
        uint32_t s = (uint32_t)plan.out_ssrc;
        o[8] = s >> 24, o[9] = (s >> 16) & 0xFF, o[10] = (s >> 8) & 0xFF, o[11] = s & 0xFF;
        memcpy(o + 12, d + pos, payload);
        if (sendto(plan.fd, o, 12 + payload, MSG_DONTWAIT, (const struct sockaddr *)plan.dest,
                   plan.dest_len) < 0) {
            /* As error_received on the asyncio path: counted, the call decides on timeouts. */
            self->send_errors++;
            uint64_t errors = 0;
            get_u64(peer, s_socket_errors, &errors);
            if (set_u64(peer, s_socket_errors, errors + 1))
                goto done;
        }
        self->relayed++;
    }
    result = 1;
done:
    Py_XDECREF(srtp);
    Py_XDECREF(leg);
    Py_XDECREF(source);
    Py_XDECREF(codecs);
    Py_XDECREF(pt_key);
    Py_XDECREF(receiver);
    Py_XDECREF(jitter);
    Py_XDECREF(peer);
    Py_XDECREF(peer_leg);
    Py_XDECREF(dest_tuple);
    Py_XDECREF(peer_config);
    Py_XDECREF(name);
    Py_XDECREF(pt_map);
    Py_XDECREF(sender);
    Py_XDECREF(stats);
    return result;
}

static int return_to_python(Entry *e, const unsigned char *d, size_t n,
                            const struct sockaddr_storage *from, PyObject *returned) {
    PyObject *addr = addr_tuple(from);
    if (addr == NULL)
        return -1;
    PyObject *item = Py_BuildValue("(Oy#N)", e->owner, (const char *)d, (Py_ssize_t)n, addr);
    if (item == NULL)
        return -1;
    int rc = PyList_Append(returned, item);
    Py_DECREF(item);
    return rc;
}

/* Read what one ready socket holds; -1 on a Python error. */
static int drain(Pump *self, Py_ssize_t slot, uint32_t gen, double now, PyObject *returned) {
    for (int round = 0; round < ROUNDS; round++) {
        Entry *e = &self->entries[slot];
        if (e->fd < 0 || e->gen != gen)
            return 0; /* unregistered meanwhile */
        for (int i = 0; i < BATCH; i++) {
            self->iov[i].iov_base = self->bufs[i];
            self->iov[i].iov_len = BUF_SIZE;
            memset(&self->msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
            self->msgs[i].msg_hdr.msg_iovlen = 1;
            self->msgs[i].msg_hdr.msg_name = &self->from[i];
            self->msgs[i].msg_hdr.msg_namelen = sizeof self->from[i];
        }
        int got = recvmmsg(e->fd, self->msgs, BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return 0;
            /* An error queued on the socket (an ICMP report): counted, as the
               asyncio transport's error_received would; the next read goes on. */
            uint64_t errors = 0;
            get_u64(e->owner, s_socket_errors, &errors);
            if (set_u64(e->owner, s_socket_errors, errors + 1))
                return -1;
            continue;
        }
        for (int i = 0; i < got; i++) {
            e = &self->entries[slot];
            if (e->fd < 0 || e->gen != gen)
                return 0;
            self->datagrams++;
            if (self->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                self->truncated++;
                continue;
            }
            const unsigned char *d = self->bufs[i];
            size_t n = self->msgs[i].msg_len;
            int taken = 0;
            if (self->step && e->mark != self->polls) {
                taken = step(self, e, d, n, &self->from[i], now);
                if (taken < 0)
                    return -1;
            }
            if (!taken) {
                e->mark = self->polls;
                self->returned++;
                if (return_to_python(e, d, n, &self->from[i], returned) < 0)
                    return -1;
            }
        }
        if (got < BATCH)
            return 0;
    }
    return 0;
}

static PyObject *Pump_poll(Pump *self, PyObject *arg) {
    double now = PyFloat_AsDouble(arg);
    if (now == -1.0 && PyErr_Occurred())
        return NULL;
    int ready = epoll_wait(self->epfd, self->events, MAX_EVENTS, 0);
    if (ready < 0) {
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        ready = 0;
    }
    self->polls++;
    uint64_t before = self->datagrams;
    PyObject *returned = PyList_New(0);
    if (returned == NULL)
        return NULL;
    for (int i = 0; i < ready; i++) {
        uint64_t data = self->events[i].data.u64;
        Py_ssize_t slot = (Py_ssize_t)(data & 0xFFFFFFFFu);
        if (slot >= self->size)
            continue;
        if (drain(self, slot, (uint32_t)(data >> 32), now, returned) < 0) {
            Py_DECREF(returned);
            return NULL;
        }
    }
    return Py_BuildValue("(NK)", returned, (unsigned long long)(self->datagrams - before));
}

static PyObject *Pump_counters(Pump *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsKsKsK}", "polls", self->polls, "datagrams",
                         self->datagrams, "relayed", self->relayed, "returned", self->returned,
                         "truncated", self->truncated, "send_errors", self->send_errors,
                         "tap_errors", self->tap_errors);
}

static PyObject *Pump_get_step(Pump *self, void *closure) {
    return PyBool_FromLong(self->step);
}

static int Pump_set_step(Pump *self, PyObject *value, void *closure) {
    int truth = value == NULL ? -1 : PyObject_IsTrue(value);
    if (truth < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "step cannot be deleted");
        return -1;
    }
    self->step = truth;
    return 0;
}

static PyGetSetDef Pump_getset[] = {
    {"step", (getter)Pump_get_step, (setter)Pump_set_step,
     "Whether the relay step takes packets in C (False: every packet goes to Python).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Pump_methods[] = {
    {"fileno", (PyCFunction)Pump_fileno, METH_NOARGS,
     "The epoll descriptor: readable when a registered socket is."},
    {"register", (PyCFunction)Pump_register, METH_VARARGS,
     "register(fd, owner, rtcp) -> slot: read this socket for ``owner`` (a LegTransport)."},
    {"unregister", (PyCFunction)Pump_unregister, METH_O,
     "unregister(slot): stop reading the socket in ``slot``; call before closing it."},
    {"poll", (PyCFunction)Pump_poll, METH_O,
     "poll(now) -> (returned, read): read every ready socket. Packets the relay step "
     "took are done; ``returned`` holds (owner, data, (host, port)) for Python to handle, "
     "in order; ``read`` counts the datagrams read."},
    {"counters", (PyCFunction)Pump_counters, METH_NOARGS, "Totals since creation."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PumpType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voicegw.media._pump.Pump",
    .tp_doc = "Batched reads of media sockets, with the same-codec relay step in C.",
    .tp_basicsize = sizeof(Pump),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Pump_new,
    .tp_init = (initproc)Pump_init,
    .tp_dealloc = (destructor)Pump_dealloc,
    .tp_traverse = (traverseproc)Pump_traverse,
    .tp_clear = (inquiry)Pump_clear,
    .tp_methods = Pump_methods,
    .tp_getset = Pump_getset,
};

static struct PyModuleDef pump_module = {
    PyModuleDef_HEAD_INIT, "voicegw.media._pump",
    "Batched media socket reads and the same-codec RTP relay step (see pump.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__pump(void) {
    if (intern_names() < 0 || PyType_Ready(&PumpType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&pump_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&PumpType);
    if (PyModule_AddObject(module, "Pump", (PyObject *)&PumpType) < 0) {
        Py_DECREF(&PumpType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/*
 * voicegw.media._jitter: the adaptive jitter buffer of voicegw/media/jitter.py in C.
 *
 * Why C: the buffer runs once per received RTP packet (push) and once per 20 ms tick
 * (pop) for every tapped call leg; in Python each costs about 6 us.
 *
 * This is a transliteration of ReferenceJitterBuffer (jitter.py), which stays the
 * specification: every branch, every counter update and every floating-point
 * operation is done in the same order, so the results are identical to the bit
 * (tests/media/test_jitter_native.py runs both on the same scenarios and compares
 * every frame and every observable field after each operation). Python floats are C
 * doubles; the extended sequence numbers (unbounded ints there) are int64 here.
 *
 * Data structures, in place of the Python ones:
 *   _packets (dict ext -> packet): an array of entries sorted by ext, with a moving
 *     head, so min() is the first entry and the common pop (the first entry) and push
 *     (after the last entry) cost no copying. It never holds more than capacity + 1.
 *   _played (deque(maxlen=capacity)): a ring of int64, grown on demand up to capacity.
 * A packet is kept as the fields pop needs (sequence number, timestamp, payload,
 * marker), read when it is pushed.
 *
 * JitterFrame and JitterCounters are the dataclasses of jitter.py, handed over by
 * _setup() right after jitter.py defines them (so there is no import cycle). A frame
 * is built the way object.__new__ plus the dataclass __init__ build it: allocate, then
 * store the five slots (the frozen dataclass's __init__ does exactly that through
 * object.__setattr__); _setup checks JitterFrame is such a plain slotted dataclass and
 * otherwise frames are made by calling the class.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_rtp_view.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* Python evaluates a * b + c as two roundings; never fuse them into one FMA. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#define MAX_SEQ_JUMP 3000
/* Sequence numbers and timestamps given to push() must lie within +-2**62 (RTP's are
 * 16 and 32 bits), so that no int64 arithmetic below can overflow. */
#define FIELD_LIMIT ((int64_t)1 << 62)
#define TWO_POW_53 9007199254740992.0

/* ---- what jitter.py hands over ------------------------------------------------ */

static PyObject *FrameClass, *CountersClass, *RtpErrorClass;
static Py_ssize_t frame_offsets[5]; /* payload, sequence_number, timestamp, concealed, marker */
static int frame_fast;              /* build frames by storing the slots directly */

static PyObject *s_ssrc, *s_sequence_number, *s_timestamp, *s_payload, *s_marker;

static const char *const frame_fields[5] = {
    "payload", "sequence_number", "timestamp", "concealed", "marker",
};

/* ---- the buffer ------------------------------------------------------------------ */

typedef struct {
    int64_t ext;       /* extended sequence number (the dict key) */
    int64_t seq;       /* packet.sequence_number */
    int64_t ts;        /* packet.timestamp */
    PyObject *payload; /* packet.payload (owned) */
    PyObject *marker;  /* packet.marker (owned) */
} Entry;

typedef struct {
    PyObject_HEAD
    /* configuration: the objects as given (for the attributes) and their doubles */
    PyObject *conceal;
    PyObject *clock_rate_obj, *frame_duration_obj, *min_delay_obj, *max_delay_obj,
        *capacity_obj, *max_stall_obj, *decay_obj, *shrink_after_obj;
    double clock_rate, frame_duration, min_delay, max_delay, max_stall, decay, shrink_after;
    Py_ssize_t capacity;
    int64_t step;
    /* counters */
    int64_t received, duplicates, late, lost, concealed, dropped, resets;
    /* state that survives resets */
    double target_delay, jitter, last_tick;
    int has_last_tick;
    /* state that _reset() clears */
    double last_transit;
    int has_last_transit;
    int64_t unwrap_last;
    int has_unwrap_last;
    int64_t ssrc;
    int has_ssrc;
    int64_t next, floor, highest;
    int has_next, has_floor, has_highest;
    double first_arrival;
    PyObject *last_payload; /* NULL for None */
    int64_t last_timestamp;
    int has_last_timestamp;
    int64_t concealed_run, stalls, over_target;
    /* _packets: entries sorted by ext in pk[pk_head, pk_head + pk_len) */
    Entry *pk;
    Py_ssize_t pk_head, pk_len, pk_alloc;
    /* _played: ring of pl_len exts starting at pl[pl_head], at most capacity */
    int64_t *pl;
    Py_ssize_t pl_head, pl_len, pl_alloc;
    PyObject *weakreflist;
} JitterBuffer;

/* Python's max(a, b) and min(a, b): the first argument unless the second is strictly
 * greater (smaller). */
static inline double py_max(double a, double b) { return b > a ? b : a; }
static inline double py_min(double a, double b) { return b < a ? b : a; }

/* ---- _packets ------------------------------------------------------------------ */

/* Index (relative to pk_head) of ext, or of where it would be inserted; *found set. */
static Py_ssize_t pk_find(JitterBuffer *self, int64_t ext, int *found) {
    Entry *base = self->pk + self->pk_head;
    Py_ssize_t lo = 0, hi = self->pk_len;
    *found = 0;
    if (hi == 0)
        return 0;
    /* The common cases: the first entry (pop) and after the last one (push in order). */
    if (base[0].ext == ext) {
        *found = 1;
        return 0;
    }
    if (base[hi - 1].ext < ext)
        return hi;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (base[mid].ext < ext)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < self->pk_len && base[lo].ext == ext;
    return lo;
}

/* Insert at relative index i; the entry's references are stolen. */
static int pk_insert(JitterBuffer *self, Py_ssize_t i, const Entry *entry) {
    if (self->pk_len + 1 > self->pk_alloc) {
        Py_ssize_t alloc = self->pk_alloc * 2;
        if (alloc < 8)
            alloc = 8;
        Entry *grown = PyMem_Malloc((size_t)alloc * sizeof(Entry));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (self->pk_len)
            memcpy(grown, self->pk + self->pk_head, (size_t)self->pk_len * sizeof(Entry));
        PyMem_Free(self->pk);
        self->pk = grown;
        self->pk_alloc = alloc;
        self->pk_head = 0;
    } else if (self->pk_head + self->pk_len == self->pk_alloc) {
        memmove(self->pk, self->pk + self->pk_head, (size_t)self->pk_len * sizeof(Entry));
        self->pk_head = 0;
    }
    Entry *base = self->pk + self->pk_head;
    if (i < self->pk_len)
        memmove(base + i + 1, base + i, (size_t)(self->pk_len - i) * sizeof(Entry));
    base[i] = *entry;
    self->pk_len++;
    return 0;
}

/* Remove the entry at relative index i into *out (its references go to the caller). */
static void pk_remove(JitterBuffer *self, Py_ssize_t i, Entry *out) {
    Entry *base = self->pk + self->pk_head;
    *out = base[i];
    if (i == 0) {
        self->pk_head++;
    } else if (i < self->pk_len - 1) {
        memmove(base + i, base + i + 1, (size_t)(self->pk_len - i - 1) * sizeof(Entry));
    }
    self->pk_len--;
    if (self->pk_len == 0)
        self->pk_head = 0;
}

/* self._packets.pop(ext, None): 1 and *out filled when it was there. */
static int pk_pop(JitterBuffer *self, int64_t ext, Entry *out) {
    int found;
    Py_ssize_t i = pk_find(self, ext, &found);
    if (!found)
        return 0;
    pk_remove(self, i, out);
    return 1;
}

static int pk_contains(JitterBuffer *self, int64_t ext) {
    int found;
    pk_find(self, ext, &found);
    return found;
}

static void entry_release(Entry *e) {
    Py_XDECREF(e->payload);
    Py_XDECREF(e->marker);
}

/* ---- _played ------------------------------------------------------------------- */

static int pl_append(JitterBuffer *self, int64_t ext) {
    if (self->capacity <= 0)
        return 0; /* deque(maxlen=0) keeps nothing */
    if (self->pl_len < self->capacity) {
        if (self->pl_len == self->pl_alloc) {
            Py_ssize_t alloc = self->pl_alloc * 2;
            if (alloc < 16)
                alloc = 16;
            if (alloc > self->capacity)
                alloc = self->capacity;
            int64_t *grown = PyMem_Malloc((size_t)alloc * sizeof(int64_t));
            if (grown == NULL) {
                PyErr_NoMemory();
                return -1;
            }
            for (Py_ssize_t k = 0; k < self->pl_len; k++)
                grown[k] = self->pl[(self->pl_head + k) % self->pl_alloc];
            PyMem_Free(self->pl);
            self->pl = grown;
            self->pl_alloc = alloc;
            self->pl_head = 0;
        }
        self->pl[(self->pl_head + self->pl_len) % self->pl_alloc] = ext;
        self->pl_len++;
    } else {
        /* full (pl_alloc == capacity): the oldest falls out */
        self->pl[self->pl_head] = ext;
        self->pl_head = (self->pl_head + 1) % self->pl_alloc;
    }
    return 0;
}

static int pl_contains(JitterBuffer *self, int64_t ext) {
    const int64_t *pl = self->pl;
    for (Py_ssize_t k = 0; k < self->pl_len; k++)
        if (pl[k] == ext) /* order does not matter: every slot in use is a member */
            return 1;
    return 0;
}

/* ---- the algorithm (names and order as in ReferenceJitterBuffer) ---------------- */

static void jb_reset(JitterBuffer *self) {
    /* Detach the packets first: state is consistent before any reference is dropped. */
    Entry *old = self->pk;
    Py_ssize_t head = self->pk_head, len = self->pk_len;
    PyObject *last_payload = self->last_payload;
    self->pk = NULL;
    self->pk_head = self->pk_len = self->pk_alloc = 0;
    self->has_unwrap_last = 0;
    self->has_ssrc = 0;
    self->has_next = 0;
    self->has_floor = 0;
    self->has_highest = 0;
    self->first_arrival = 0.0;
    self->pl_head = self->pl_len = 0;
    self->last_payload = NULL;
    self->has_last_timestamp = 0;
    self->concealed_run = 0;
    self->stalls = 0;
    self->over_target = 0;
    self->has_last_transit = 0;
    for (Py_ssize_t k = 0; k < len; k++)
        entry_release(&old[head + k]);
    PyMem_Free(old);
    Py_XDECREF(last_payload);
}

/* SequenceUnwrapper.unwrap */
static int64_t jb_unwrap(JitterBuffer *self, int64_t seq) {
    int64_t extended;
    if (!self->has_unwrap_last) {
        extended = seq;
    } else {
        int64_t last = self->unwrap_last;
        /* seq_diff(seq, last & 0xFFFF) */
        int64_t diff = (int64_t)(((uint64_t)seq - (uint64_t)(last & 0xFFFF) + 0x8000) & 0xFFFF)
                       - 0x8000;
        extended = last + diff;
    }
    if (!self->has_unwrap_last || extended > self->unwrap_last) {
        self->unwrap_last = extended;
        self->has_unwrap_last = 1;
    }
    return extended;
}

static int target_frames(JitterBuffer *self, int64_t *out) {
    if (self->frame_duration == 0.0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return -1;
    }
    double c = ceil(self->target_delay / self->frame_duration - 1e-9);
    if (isnan(c)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        return -1;
    }
    if (isinf(c)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        return -1;
    }
    /* max(1, c); a c beyond 2**62 compares the same as 2**62 with anything here */
    *out = c > 1.0 ? (c > (double)FIELD_LIMIT ? FIELD_LIMIT : (int64_t)c) : 1;
    return 0;
}

static void jb_grow(JitterBuffer *self) {
    self->target_delay = py_min(self->max_delay, self->target_delay + self->frame_duration);
}

static void jb_skip_to(JitterBuffer *self, int64_t ext) {
    if (self->has_floor && ext > self->floor)
        self->floor = ext;
    if (self->has_next && ext > self->next)
        self->next = ext;
}

/* timestamp / self.clock_rate, as Python divides an int by the clock rate. */
static int ts_over_rate(JitterBuffer *self, int64_t timestamp, double *out) {
    if (self->clock_rate != 0.0 && fabs((double)timestamp) <= TWO_POW_53) {
        *out = (double)timestamp / self->clock_rate; /* both exact: one rounding, as Python */
        return 0;
    }
    /* zero (Python's own ZeroDivisionError) or huge: let Python divide */
    PyObject *ts = PyLong_FromLongLong(timestamp);
    if (ts == NULL)
        return -1;
    PyObject *q = PyNumber_TrueDivide(ts, self->clock_rate_obj);
    Py_DECREF(ts);
    if (q == NULL)
        return -1;
    *out = PyFloat_AsDouble(q);
    Py_DECREF(q);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int jb_update_jitter(JitterBuffer *self, int64_t timestamp, double now) {
    double q;
    if (ts_over_rate(self, timestamp, &q) < 0)
        return -1;
    double transit = now - q;
    double last = self->last_transit;
    int had_last = self->has_last_transit;
    self->last_transit = transit;
    self->has_last_transit = 1;
    if (!had_last)
        return 0;
    double d = fabs(transit - last);
    if (d > 2147483648.0 / self->clock_rate) /* 32-bit timestamp wrapped in between */
        d = fabs(d - 4294967296.0 / self->clock_rate);
    if (d > 1.0) /* a timestamp jump (sender clock reset), not network jitter: rebase */
        return 0;
    self->jitter += (d - self->jitter) / 16.0;
    return 0;
}

static void jb_adapt(JitterBuffer *self, double now) {
    double wanted = py_min(self->max_delay,
                           py_max(self->min_delay, self->min_delay + 3.0 * self->jitter));
    if (self->has_last_tick && self->target_delay > wanted) {
        double decayed =
            self->target_delay - self->decay * py_max(0.0, now - self->last_tick);
        self->target_delay = py_max(wanted, decayed);
    } else {
        self->target_delay = py_max(self->target_delay, wanted);
    }
    self->last_tick = now;
    self->has_last_tick = 1;
}

static int64_t jb_depth(JitterBuffer *self) {
    if (self->pk_len == 0 || !self->has_highest)
        return 0;
    int64_t start = self->has_next ? self->next : self->pk[self->pk_head].ext;
    return self->highest - start + 1;
}

/* JitterFrame(payload, sequence_number, timestamp, concealed, marker); steals payload
 * and marker, even on failure. */
static PyObject *make_frame(PyObject *payload, int64_t seq, int64_t ts, int concealed,
                            PyObject *marker) {
    PyObject *fields[5];
    fields[0] = payload;
    fields[1] = PyLong_FromLongLong(seq);
    fields[2] = PyLong_FromLongLong(ts);
    fields[3] = Py_NewRef(concealed ? Py_True : Py_False);
    fields[4] = marker;
    if (fields[1] == NULL || fields[2] == NULL || FrameClass == NULL) {
        if (FrameClass == NULL && !PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "voicegw.media._jitter._setup() not called");
        for (int k = 0; k < 5; k++)
            Py_XDECREF(fields[k]);
        return NULL;
    }
    if (frame_fast) {
        PyTypeObject *type = (PyTypeObject *)FrameClass;
        PyObject *frame = type->tp_alloc(type, 0);
        if (frame != NULL) {
            for (int k = 0; k < 5; k++)
                *(PyObject **)((char *)frame + frame_offsets[k]) = fields[k];
            return frame;
        }
    } else {
        PyObject *frame = PyObject_Vectorcall(FrameClass, fields, 5, NULL);
        for (int k = 0; k < 5; k++)
            Py_DECREF(fields[k]);
        return frame;
    }
    for (int k = 0; k < 5; k++)
        Py_DECREF(fields[k]);
    return NULL;
}

/* What pop() plays, before it becomes a JitterFrame (pop) or PCM (pop_pcm): owns
 * ``payload`` and ``marker``. */
typedef struct {
    PyObject *payload, *marker;
    int64_t seq, ts;
    int concealed;
} Played;

/* The jb_* steps below that play something return 1 with *out filled, 0 when nothing
 * plays (None), -1 on an error. */
static int jb_concealment(JitterBuffer *self, int64_t ext, Played *out) {
    self->concealed++;
    self->concealed_run++;
    if (self->conceal == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "jitter buffer was cleared");
        return -1;
    }
    PyObject *conceal = Py_NewRef(self->conceal);
    PyObject *args[2];
    args[0] = Py_NewRef(self->last_payload != NULL ? self->last_payload : Py_None);
    args[1] = PyLong_FromLongLong(self->concealed_run);
    if (args[1] == NULL) {
        Py_DECREF(args[0]);
        Py_DECREF(conceal);
        return -1;
    }
    PyObject *payload = PyObject_Vectorcall(conceal, args, 2, NULL);
    Py_DECREF(args[0]);
    Py_DECREF(args[1]);
    Py_DECREF(conceal);
    if (payload == NULL)
        return -1;
    int64_t timestamp = 0;
    if (self->has_last_timestamp) {
        timestamp = (int64_t)(((uint64_t)self->last_timestamp + (uint64_t)self->step)
                              & 0xFFFFFFFFu);
        self->last_timestamp = timestamp;
    }
    *out = (Played){payload, Py_NewRef(Py_False), ext & 0xFFFF, timestamp, 1};
    return 1;
}

static int jb_stall(JitterBuffer *self, Played *out) {
    self->stalls++;
    return jb_concealment(self, self->next, out);
}

static int jb_maybe_shrink(JitterBuffer *self) {
    int64_t depth = jb_depth(self), target;
    if (target_frames(self, &target) < 0)
        return -1;
    if (depth > target + 1)
        self->over_target++;
    else
        self->over_target = 0;
    if ((double)self->over_target >= self->shrink_after && pk_contains(self, self->next)) {
        Entry dropped;
        pk_pop(self, self->next, &dropped);
        int rc = pl_append(self, self->next);
        if (rc == 0) {
            self->next++;
            self->floor = self->next;
            self->dropped++;
            self->over_target = 0;
        }
        entry_release(&dropped);
        return rc;
    }
    return 0;
}

/* _play(packet): takes over the entry's references. */
static int jb_play(JitterBuffer *self, Entry *entry, Played *out) {
    if (self->stalls) /* we waited for this packet: it came later than playout wanted */
        jb_grow(self);
    self->stalls = 0;
    self->concealed_run = 0;
    if (pl_append(self, self->next) < 0) {
        entry_release(entry);
        return -1;
    }
    self->next++;
    self->floor = self->next;
    Py_XSETREF(self->last_payload, Py_NewRef(entry->payload));
    self->last_timestamp = entry->ts;
    self->has_last_timestamp = 1;
    if (jb_maybe_shrink(self) < 0) {
        entry_release(entry);
        return -1;
    }
    *out = (Played){entry->payload, entry->marker, entry->seq, entry->ts, 0};
    return 1;
}

static int jb_start(JitterBuffer *self, double now) {
    if (self->pk_len == 0 || !self->has_highest)
        return 0;
    int64_t lowest = self->pk[self->pk_head].ext;
    int64_t span = self->highest - lowest + 1, target;
    if (target_frames(self, &target) < 0)
        return -1;
    if (span < target && now - self->first_arrival < self->target_delay - 1e-9)
        return 0;
    if (self->has_floor && lowest > self->floor)
        self->lost += lowest - self->floor;
    self->next = lowest;
    self->has_next = 1;
    self->floor = lowest;
    self->has_floor = 1;
    return 1;
}

static int jb_pop(JitterBuffer *self, double now, Played *out) {
    Entry entry;
    jb_adapt(self, now);
    if (!self->has_next) {
        int started = jb_start(self, now);
        if (started <= 0)
            return started;
    }
    if (pk_pop(self, self->next, &entry))
        return jb_play(self, &entry, out);
    if (self->pk_len) {
        int64_t target;
        if (target_frames(self, &target) < 0)
            return -1;
        if (self->highest - self->next < target && self->stalls < target)
            return jb_stall(self, out);
        /* Enough later packets are queued, or we waited the target delay: the missing
         * one could no longer play in time. */
        self->lost++;
        int64_t missing = self->next;
        self->next++;
        self->floor = self->next;
        if (self->stalls) {
            /* Its slot was already filled with concealment while we waited. */
            self->stalls = 0;
            if (pk_pop(self, self->next, &entry))
                return jb_play(self, &entry, out);
        }
        return jb_concealment(self, missing, out);
    }
    if ((double)self->stalls >= self->max_stall) {
        /* Nothing arrives: end of talkspurt (or of the stream). Rebuffer on the next. */
        self->has_next = 0;
        self->stalls = 0;
        return 0;
    }
    return jb_stall(self, out);
}

/* push, up to the duplicate and late checks: 1 to go on with *ext, 0 when done. */
static int jb_push_head(JitterBuffer *self, int64_t ssrc, int64_t seq, int64_t *ext_out) {
    self->received++;
    if (self->has_ssrc && ssrc != self->ssrc) {
        jb_reset(self);
        self->resets++;
    }
    self->ssrc = ssrc;
    self->has_ssrc = 1;
    int64_t ext = jb_unwrap(self, seq);
    if (self->has_floor) {
        int64_t jump = ext - self->floor;
        if (jump > MAX_SEQ_JUMP || jump < -MAX_SEQ_JUMP) {
            jb_reset(self);
            self->resets++;
            self->ssrc = ssrc;
            self->has_ssrc = 1;
            ext = jb_unwrap(self, seq);
        }
    }
    if (pk_contains(self, ext) || pl_contains(self, ext)) {
        self->duplicates++;
        return 0;
    }
    if (self->has_floor && ext < self->floor) {
        self->late++;
        jb_grow(self);
        return 0;
    }
    *ext_out = ext;
    return 1;
}

/* push, from the jitter update on; steals entry->payload and entry->marker. */
static int jb_push_tail(JitterBuffer *self, Entry *entry, double now) {
    if (jb_update_jitter(self, entry->ts, now) < 0) {
        entry_release(entry);
        return -1;
    }
    if (self->pk_len == 0 && !self->has_next)
        self->first_arrival = now;
    int found;
    Py_ssize_t i = pk_find(self, entry->ext, &found); /* not found: checked above */
    if (pk_insert(self, i, entry) < 0) {
        entry_release(entry);
        return -1;
    }
    if (!self->has_highest || entry->ext > self->highest) {
        self->highest = entry->ext;
        self->has_highest = 1;
    }
    if (!self->has_floor) {
        self->floor = entry->ext;
        self->has_floor = 1;
    }
    while (self->pk_len > self->capacity) {
        Entry oldest;
        pk_remove(self, 0, &oldest);
        self->dropped++;
        jb_skip_to(self, oldest.ext + 1);
        entry_release(&oldest);
    }
    return 0;
}

/* ---- Python interface ------------------------------------------------------------ */

static int get_field(PyObject *packet, PyObject *name, int64_t limit, int64_t *out) {
    PyObject *value = PyObject_GetAttr(packet, name);
    if (value == NULL)
        return -1;
    long long v = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (limit && (v > limit || v < -limit)) {
        PyErr_Format(PyExc_OverflowError, "RTP packet field %U is out of range", name);
        return -1;
    }
    *out = v;
    return 0;
}

static int get_now(PyObject *arg, double *now) {
    *now = PyFloat_AsDouble(arg);
    return *now == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *JitterBuffer_push(JitterBuffer *self, PyObject *const *args,
                                   Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "push() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *packet = args[0];
    double now;
    int64_t ssrc, seq, ext;
    Entry entry;
    if (get_now(args[1], &now) < 0)
        return NULL;
    if (get_field(packet, s_ssrc, 0, &ssrc) < 0 ||
        get_field(packet, s_sequence_number, FIELD_LIMIT, &seq) < 0)
        return NULL;
    int go = jb_push_head(self, ssrc, seq, &ext);
    if (go <= 0)
        Py_RETURN_NONE;
    entry.ext = ext;
    entry.seq = seq;
    if (get_field(packet, s_timestamp, FIELD_LIMIT, &entry.ts) < 0)
        return NULL;
    if ((entry.payload = PyObject_GetAttr(packet, s_payload)) == NULL)
        return NULL;
    if ((entry.marker = PyObject_GetAttr(packet, s_marker)) == NULL) {
        Py_DECREF(entry.payload);
        return NULL;
    }
    if (jb_push_tail(self, &entry, now) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *rtp_error(const char *message) {
    if (RtpErrorClass == NULL)
        PyErr_SetString(PyExc_RuntimeError, "voicegw.media._jitter._setup() not called");
    else
        PyErr_SetString(RtpErrorClass, message);
    return NULL;
}

static PyObject *JitterBuffer_push_rtp(JitterBuffer *self, PyObject *const *args,
                                       Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "push_rtp() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *data = args[0];
    double now;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "push_rtp() needs bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    if (get_now(args[1], &now) < 0)
        return NULL;
    const unsigned char *d = (const unsigned char *)PyBytes_AS_STRING(data);
    RtpView rtp;
    const char *error = rtp_view(d, (size_t)PyBytes_GET_SIZE(data), &rtp);
    if (error != NULL)
        return rtp_error(error);
    int64_t seq = rtp.seq, ts = rtp.timestamp, ssrc = rtp.ssrc;
    int64_t ext;
    int go = jb_push_head(self, ssrc, seq, &ext);
    if (go <= 0)
        Py_RETURN_NONE;
    Entry entry;
    entry.ext = ext;
    entry.seq = seq;
    entry.ts = ts;
    entry.payload = PyBytes_FromStringAndSize((const char *)d + rtp.payload_start,
                                              (Py_ssize_t)(rtp.payload_end - rtp.payload_start));
    if (entry.payload == NULL)
        return NULL;
    entry.marker = Py_NewRef(rtp.marker ? Py_True : Py_False);
    if (jb_push_tail(self, &entry, now) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *JitterBuffer_pop(JitterBuffer *self, PyObject *arg) {
    double now;
    Played played;
    if (get_now(arg, &now) < 0)
        return NULL;
    int rc = jb_pop(self, now, &played);
    if (rc <= 0)
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    return make_frame(played.payload, played.seq, played.ts, played.concealed, played.marker);
}

/* PCM of a table-coded payload (G.711): two little-endian bytes of the table per code. */
static PyObject *table_decode(PyObject *payload, const unsigned char *table) {
    if (!PyBytes_Check(payload)) {
        PyErr_Format(PyExc_TypeError, "frame payload must be bytes, not %.100s",
                     Py_TYPE(payload)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(payload);
    PyObject *pcm = PyBytes_FromStringAndSize(NULL, 2 * n);
    if (pcm == NULL)
        return NULL;
    const unsigned char *codes = (const unsigned char *)PyBytes_AS_STRING(payload);
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(pcm);
    for (Py_ssize_t i = 0; i < n; i++)
        memcpy(out + 2 * i, table + 2 * codes[i], 2);
    return pcm;
}

static PyObject *JitterBuffer_pop_pcm(JitterBuffer *self, PyObject *const *args,
                                      Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "pop_pcm() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    double now;
    if (get_now(args[0], &now) < 0)
        return NULL;
    if (!PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != 512) {
        PyErr_SetString(PyExc_ValueError, "table must be 512 bytes: 256 little-endian int16");
        return NULL;
    }
    Played played;
    int rc = jb_pop(self, now, &played);
    if (rc <= 0)
        return rc < 0 ? NULL : Py_NewRef(Py_None);
    const unsigned char *table = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    PyObject *pcm = table_decode(played.payload, table);
    Py_DECREF(played.payload);
    Py_DECREF(played.marker);
    if (pcm == NULL)
        return NULL;
    PyObject *out = PyTuple_Pack(2, pcm, played.concealed ? Py_True : Py_False);
    Py_DECREF(pcm);
    return out;
}

static void jb_clear_config(JitterBuffer *self) {
    Py_CLEAR(self->conceal);
    Py_CLEAR(self->clock_rate_obj);
    Py_CLEAR(self->frame_duration_obj);
    Py_CLEAR(self->min_delay_obj);
    Py_CLEAR(self->max_delay_obj);
    Py_CLEAR(self->capacity_obj);
    Py_CLEAR(self->max_stall_obj);
    Py_CLEAR(self->decay_obj);
    Py_CLEAR(self->shrink_after_obj);
}

static int as_double(PyObject *obj, double *out) {
    *out = PyFloat_AsDouble(obj);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static int JitterBuffer_init(JitterBuffer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"conceal",  "clock_rate", "frame_duration", "min_delay",
                             "max_delay", "capacity", "max_stall",      "decay",
                             "shrink_after", NULL};
    PyObject *conceal = NULL, *clock_rate = NULL, *frame_duration = NULL, *min_delay = NULL,
             *max_delay = NULL, *capacity = NULL, *max_stall = NULL, *decay = NULL,
             *shrink_after = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOOOOOO:JitterBuffer", kwlist, &conceal,
                                     &clock_rate, &frame_duration, &min_delay, &max_delay,
                                     &capacity, &max_stall, &decay, &shrink_after))
        return -1;
    if (conceal == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "JitterBuffer() missing 1 required keyword-only argument: 'conceal'");
        return -1;
    }
    PyObject *owned[8] = {NULL};
    PyObject **given[8] = {&clock_rate, &frame_duration, &min_delay, &max_delay,
                           &capacity,   &max_stall,      &decay,     &shrink_after};
    static const double defaults[8] = {8000, 0.02, 0.02, 0.2, 50, 5, 0.01, 50};
    static const int integral[8] = {1, 0, 0, 0, 1, 1, 0, 1};
    int rc = -1;
    for (int k = 0; k < 8; k++) {
        if (*given[k] == NULL) {
            owned[k] = integral[k] ? PyLong_FromLong((long)defaults[k])
                                   : PyFloat_FromDouble(defaults[k]);
            if (owned[k] == NULL)
                goto done;
            *given[k] = owned[k];
        }
    }
    double cr, fd, lo, hi, ms, dc, sa;
    if (as_double(min_delay, &lo) < 0 || as_double(max_delay, &hi) < 0)
        goto done;
    if (!(0 < lo && lo <= hi)) {
        PyErr_SetString(PyExc_ValueError, "need 0 < min_delay <= max_delay");
        goto done;
    }
    if (as_double(clock_rate, &cr) < 0 || as_double(frame_duration, &fd) < 0 ||
        as_double(max_stall, &ms) < 0 || as_double(decay, &dc) < 0 ||
        as_double(shrink_after, &sa) < 0)
        goto done;
    /* round(clock_rate * frame_duration): half to even */
    double step = nearbyint(cr * fd);
    if (isnan(step)) {
        PyErr_SetString(PyExc_ValueError, "cannot convert float NaN to integer");
        goto done;
    }
    if (isinf(step)) {
        PyErr_SetString(PyExc_OverflowError, "cannot convert float infinity to integer");
        goto done;
    }
    if (fabs(step) > (double)FIELD_LIMIT) {
        PyErr_SetString(PyExc_OverflowError, "frame step (clock_rate x frame_duration) too large");
        goto done;
    }
    Py_ssize_t cap = PyLong_AsSsize_t(capacity); /* as deque(maxlen=capacity) */
    if (cap == -1 && PyErr_Occurred())
        goto done;
    if (cap < 0) {
        PyErr_SetString(PyExc_ValueError, "maxlen must be non-negative");
        goto done;
    }
    jb_clear_config(self);
    self->conceal = Py_NewRef(conceal);
    self->clock_rate_obj = Py_NewRef(clock_rate);
    self->frame_duration_obj = Py_NewRef(frame_duration);
    self->min_delay_obj = Py_NewRef(min_delay);
    self->max_delay_obj = Py_NewRef(max_delay);
    self->capacity_obj = Py_NewRef(capacity);
    self->max_stall_obj = Py_NewRef(max_stall);
    self->decay_obj = Py_NewRef(decay);
    self->shrink_after_obj = Py_NewRef(shrink_after);
    self->clock_rate = cr;
    self->frame_duration = fd;
    self->min_delay = lo;
    self->max_delay = hi;
    self->capacity = cap;
    self->max_stall = ms;
    self->decay = dc;
    self->shrink_after = sa;
    self->step = (int64_t)step;
    self->received = self->duplicates = self->late = self->lost = 0;
    self->concealed = self->dropped = self->resets = 0;
    self->target_delay = lo;
    self->jitter = 0.0;
    self->has_last_transit = 0;
    self->has_last_tick = 0;
    jb_reset(self);
    PyMem_Free(self->pl); /* the ring is sized by capacity, which may have changed */
    self->pl = NULL;
    self->pl_alloc = 0;
    rc = 0;
done:
    for (int k = 0; k < 8; k++)
        Py_XDECREF(owned[k]);
    return rc;
}

static int JitterBuffer_traverse(JitterBuffer *self, visitproc visit, void *arg) {
    Py_VISIT(self->conceal);
    Py_VISIT(self->last_payload);
    Py_VISIT(self->clock_rate_obj);
    Py_VISIT(self->frame_duration_obj);
    Py_VISIT(self->min_delay_obj);
    Py_VISIT(self->max_delay_obj);
    Py_VISIT(self->capacity_obj);
    Py_VISIT(self->max_stall_obj);
    Py_VISIT(self->decay_obj);
    Py_VISIT(self->shrink_after_obj);
    for (Py_ssize_t k = 0; k < self->pk_len; k++) {
        Py_VISIT(self->pk[self->pk_head + k].payload);
        Py_VISIT(self->pk[self->pk_head + k].marker);
    }
    return 0;
}

static int JitterBuffer_clear(JitterBuffer *self) {
    jb_reset(self);
    jb_clear_config(self);
    return 0;
}

static void JitterBuffer_dealloc(JitterBuffer *self) {
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    JitterBuffer_clear(self);
    PyMem_Free(self->pk);
    PyMem_Free(self->pl);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* ---- attributes ---------------------------------------------------------------- */

static PyObject *get_counters(JitterBuffer *self, void *closure) {
    if (CountersClass == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "voicegw.media._jitter._setup() not called");
        return NULL;
    }
    int64_t values[7] = {self->received, self->duplicates, self->late,   self->lost,
                         self->concealed, self->dropped,   self->resets};
    PyObject *args[7];
    for (int k = 0; k < 7; k++) {
        args[k] = PyLong_FromLongLong(values[k]);
        if (args[k] == NULL) {
            for (int j = 0; j < k; j++)
                Py_DECREF(args[j]);
            return NULL;
        }
    }
    PyObject *counters = PyObject_Vectorcall(CountersClass, args, 7, NULL);
    for (int k = 0; k < 7; k++)
        Py_DECREF(args[k]);
    return counters;
}

static PyObject *get_jitter(JitterBuffer *self, void *closure) {
    return PyFloat_FromDouble(self->jitter);
}

static PyObject *get_depth(JitterBuffer *self, void *closure) {
    return PyLong_FromLongLong(jb_depth(self));
}

static PyObject *get_target_delay(JitterBuffer *self, void *closure) {
    return PyFloat_FromDouble(self->target_delay);
}

static int set_target_delay(JitterBuffer *self, PyObject *value, void *closure) {
    double v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete target_delay");
        return -1;
    }
    if (as_double(value, &v) < 0)
        return -1;
    self->target_delay = v;
    return 0;
}

#define CONFIG_GETTER(field)                                              \
    static PyObject *get_##field(JitterBuffer *self, void *closure) {      \
        if (self->field##_obj == NULL)                                     \
            Py_RETURN_NONE;                                                \
        return Py_NewRef(self->field##_obj);                               \
    }
CONFIG_GETTER(clock_rate)
CONFIG_GETTER(frame_duration)
CONFIG_GETTER(min_delay)
CONFIG_GETTER(max_delay)
CONFIG_GETTER(capacity)
CONFIG_GETTER(max_stall)
CONFIG_GETTER(decay)
CONFIG_GETTER(shrink_after)

static PyGetSetDef JitterBuffer_getset[] = {
    {"counters", (getter)get_counters, NULL,
     "A JitterCounters snapshot of the running counts (a new object on each access).", NULL},
    {"jitter", (getter)get_jitter, NULL, "Interarrival jitter estimate in seconds.", NULL},
    {"depth", (getter)get_depth, NULL,
     "Frames queued from the playout point to the newest packet.", NULL},
    {"target_delay", (getter)get_target_delay, (setter)set_target_delay,
     "The playout delay aimed at, in seconds.", NULL},
    {"clock_rate", (getter)get_clock_rate, NULL, NULL, NULL},
    {"frame_duration", (getter)get_frame_duration, NULL, NULL, NULL},
    {"min_delay", (getter)get_min_delay, NULL, NULL, NULL},
    {"max_delay", (getter)get_max_delay, NULL, NULL, NULL},
    {"capacity", (getter)get_capacity, NULL, NULL, NULL},
    {"max_stall", (getter)get_max_stall, NULL, NULL, NULL},
    {"decay", (getter)get_decay, NULL, NULL, NULL},
    {"shrink_after", (getter)get_shrink_after, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef JitterBuffer_methods[] = {
    {"push", (PyCFunction)(void (*)(void))JitterBuffer_push, METH_FASTCALL,
     "push(packet, now): queue one received RtpPacket."},
    {"push_rtp", (PyCFunction)(void (*)(void))JitterBuffer_push_rtp, METH_FASTCALL,
     "push_rtp(data, now): push(RtpPacket.parse(data), now), parsing in C; raises RtpError."},
    {"pop", (PyCFunction)JitterBuffer_pop, METH_O,
     "pop(now) -> JitterFrame | None: the frame to play at this tick."},
    {"pop_pcm", (PyCFunction)(void (*)(void))JitterBuffer_pop_pcm, METH_FASTCALL,
     "pop_pcm(now, table) -> (pcm, concealed) | None: pop(now), its payload decoded\n"
     "through table (the 256 little-endian int16 samples of a G.711 law)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject JitterBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "voicegw.media._jitter.JitterBuffer",
    .tp_doc = "Reorders, de-duplicates and paces one RTP stream; conceals what is missing.\n\n"
              "The C implementation of voicegw.media.jitter.ReferenceJitterBuffer.",
    .tp_basicsize = sizeof(JitterBuffer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)JitterBuffer_init,
    .tp_dealloc = (destructor)JitterBuffer_dealloc,
    .tp_traverse = (traverseproc)JitterBuffer_traverse,
    .tp_clear = (inquiry)JitterBuffer_clear,
    .tp_methods = JitterBuffer_methods,
    .tp_getset = JitterBuffer_getset,
    .tp_weaklistoffset = offsetof(JitterBuffer, weakreflist),
};

/* ---- _setup ---------------------------------------------------------------------- */

/* Whether JitterFrame is a plain slotted dataclass whose __init__ only stores its five
 * fields in order: then a frame is built by storing them in the slots directly. */
static int frame_class_is_plain(PyObject *cls) {
    if (!PyType_Check(cls))
        return 0;
    PyTypeObject *type = (PyTypeObject *)cls;
    if (type->tp_new != PyBaseObject_Type.tp_new || type->tp_itemsize != 0 ||
        type->tp_alloc != PyType_GenericAlloc)
        return 0;
    int has = PyObject_HasAttrString(cls, "__post_init__");
    if (has)
        return 0;
    PyObject *fields = PyObject_GetAttrString(cls, "__dataclass_fields__");
    if (fields == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *names = PyDict_Check(fields) ? PyDict_Keys(fields) : NULL;
    Py_DECREF(fields);
    if (names == NULL) {
        PyErr_Clear();
        return 0;
    }
    int plain = PyList_GET_SIZE(names) == 5;
    for (int k = 0; plain && k < 5; k++) {
        PyObject *name = PyList_GET_ITEM(names, k);
        if (!PyUnicode_Check(name) || PyUnicode_CompareWithASCIIString(name, frame_fields[k])) {
            plain = 0;
            break;
        }
        PyObject *descr = PyDict_GetItemWithError(type->tp_dict, name);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            plain = 0;
            break;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
            plain = 0;
            break;
        }
        frame_offsets[k] = member->offset;
    }
    Py_DECREF(names);
    PyErr_Clear();
    return plain;
}

static PyObject *jitter_setup(PyObject *module, PyObject *args) {
    PyObject *frame, *counters, *rtp_error_cls;
    if (!PyArg_ParseTuple(args, "OOO:_setup", &frame, &counters, &rtp_error_cls))
        return NULL;
    Py_XSETREF(FrameClass, Py_NewRef(frame));
    Py_XSETREF(CountersClass, Py_NewRef(counters));
    Py_XSETREF(RtpErrorClass, Py_NewRef(rtp_error_cls));
    frame_fast = frame_class_is_plain(frame);
    Py_RETURN_NONE;
}

static PyObject *jitter_fast_frames(PyObject *module, PyObject *unused) {
    return PyBool_FromLong(frame_fast);
}

static PyMethodDef module_methods[] = {
    {"_setup", jitter_setup, METH_VARARGS,
     "_setup(JitterFrame, JitterCounters, RtpError): the classes of jitter.py and rtp.py."},
    {"_fast_frames", jitter_fast_frames, METH_NOARGS,
     "Whether frames are built by storing JitterFrame's slots directly."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef jitter_module = {
    PyModuleDef_HEAD_INIT, "voicegw.media._jitter",
    "The adaptive jitter buffer in C (see jitter.py; ReferenceJitterBuffer is the spec).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__jitter(void) {
#define NAME(var, text)                                       \
    if (var == NULL && (var = PyUnicode_InternFromString(text)) == NULL) \
        return NULL;
    NAME(s_ssrc, "ssrc")
    NAME(s_sequence_number, "sequence_number")
    NAME(s_timestamp, "timestamp")
    NAME(s_payload, "payload")
    NAME(s_marker, "marker")
#undef NAME
    if (PyType_Ready(&JitterBufferType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&jitter_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&JitterBufferType);
    if (PyModule_AddObject(module, "JitterBuffer", (PyObject *)&JitterBufferType) < 0) {
        Py_DECREF(&JitterBufferType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/*
 * The RTP fixed header and where the payload lies (RFC 3550 §5.1), for the C extensions:
 * the checks of voicegw.media.rtp.RtpPacket.parse, in the same order with the same
 * messages, so the media pump (which relays valid packets) and the jitter buffer (which
 * must refuse what RtpPacket.parse refuses) read a packet the same way.
 */
#ifndef VOICEGW_RTP_VIEW_H
#define VOICEGW_RTP_VIEW_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    unsigned payload_type, marker;
    uint32_t seq, timestamp, ssrc;
    size_t payload_start, payload_end; /* after CSRCs and extension, before padding */
} RtpView;

/* NULL when ``d`` is an RTP packet (its fields in *view); else RtpPacket.parse's message. */
static inline const char *rtp_view(const unsigned char *d, size_t n, RtpView *view) {
    if (n < 12)
        return "RTP packet length is less than 12 bytes";
    unsigned first = d[0], second = d[1];
    if (first >> 6 != 2)
        return "RTP packet has invalid version";
    size_t pos = 12, end = n;
    unsigned cc = first & 0x0F;
    if (cc) {
        pos += 4 * (size_t)cc;
        if (pos > end)
            return "RTP packet has truncated CSRC list";
    }
    if (first & 0x10) {
        if (pos + 4 > end)
            return "RTP packet has truncated extension header";
        size_t words = ((size_t)d[pos + 2] << 8) | d[pos + 3];
        pos += 4;
        if (pos + 4 * words > end)
            return "RTP packet has truncated extension";
        pos += 4 * words;
    }
    if (first & 0x20) {
        size_t padding = d[n - 1];
        if (padding == 0 || pos + padding > end)
            return "RTP packet padding length is invalid";
        end -= padding;
    }
    view->payload_type = second & 0x7F;
    view->marker = second >> 7;
    view->seq = ((uint32_t)d[2] << 8) | d[3];
    view->timestamp =
        ((uint32_t)d[4] << 24) | ((uint32_t)d[5] << 16) | ((uint32_t)d[6] << 8) | d[7];
    view->ssrc = ((uint32_t)d[8] << 24) | ((uint32_t)d[9] << 16) | ((uint32_t)d[10] << 8) | d[11];
    view->payload_start = pos;
    view->payload_end = end;
    return NULL;
}

#endif

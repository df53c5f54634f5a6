"""grpc core's server keepalive and ping-abuse policy, for one HTTP/2 gRPC connection.

Data path position: beside app/rpc/h2/inbound.py, which reports each PING the client sends
(ping_received) and each PING ACK (acked), and app/rpc/h2/connection.py, whose one timer per
connection asks here when our next keepalive PING or its deadline is due (next_check_at)
and what to do then (check). The numbers come from H2Limits (app/rpc/h2/limits.py, the
--grpc_keepalive_* / --grpc_*ping* flags), with grpc core's server defaults.

What grpc core's chttp2 server does, and so what this does:
- The client's PINGs (ping_abuse_policy.cc): a PING that comes sooner than the minimum
  interval after the previous one is a strike; the interval is 5 minutes while a call is
  open, 2 hours (RFC 1122's TCP keepalive) while none is and pings without calls are not
  permitted. Past max_ping_strikes strikes the connection gets GOAWAY(ENHANCE_YOUR_CALM,
  "too_many_pings") and is closed. Each HEADERS, DATA or WINDOW_UPDATE the server writes
  starts the count over (writing.cc, grpc_chttp2_reset_ping_clock).
- Our PINGs (chttp2_transport.cc): after keepalive_time with nothing read from the client,
  the server sends a PING, but only while a call is open (or pings without calls are
  permitted); otherwise it waits another keepalive_time. Nothing at all read from the client
  for keepalive_timeout after that PING: GOAWAY(ENHANCE_YOUR_CALM, "keepalive_timeout") and
  closed. Bytes but no ACK: grpc core's ping timeout (a minute) ends it the same way with
  "ping_timeout".
"""

from __future__ import annotations

import math

from app.rpc.h2.limits import H2Limits

# With no call open (and pings without calls not permitted), a client's PINGs must be this
# far apart: grpc core's stand-in for TCP keepalive's two hours (RFC 1122).
IDLE_PING_INTERVAL_SECONDS = 2 * 3600.0
# grpc core's ping timeout when keepalive is on (grpc.http2.ping_timeout_ms's default): how
# long an ACK may take while the client is sending other frames.
PING_ACK_TIMEOUT_SECONDS = 60.0
# A timer may fire a little early (uvloop counts milliseconds): that close counts as due.
TIMER_SLACK_SECONDS = 0.001
# Our keepalive PING's opaque data; its ACK carries it back.
KEEPALIVE_PAYLOAD = b"tfgateKA"

# check()'s verdicts; the two failures double as the GOAWAY's debug data.
WAIT = ""
SEND_PING = "send_ping"
KEEPALIVE_TIMEOUT = "keepalive_timeout"
PING_TIMEOUT = "ping_timeout"
TOO_MANY_PINGS = b"too_many_pings"


class Keepalive:
    """One connection's ping bookkeeping. Times are the event loop's clock (loop.time());
    `read_at` is when bytes last came from the client."""

    __slots__ = (
        "interval_seconds",
        "last_ping_at",
        "max_strikes",
        "permit_without_calls",
        "ping_sent_at",
        "strikes",
        "time_seconds",
        "timeout_seconds",
        "waiting_since",
    )

    def __init__(self, limits: H2Limits) -> None:
        self.time_seconds = limits.keepalive_time_seconds  # 0: no keepalive PINGs
        self.timeout_seconds = limits.keepalive_timeout_seconds
        self.interval_seconds = limits.min_recv_ping_interval_without_data_seconds
        self.max_strikes = limits.max_ping_strikes  # 0: strikes never close
        self.permit_without_calls = limits.keepalive_permit_without_calls
        self.strikes = 0
        self.last_ping_at = -math.inf
        self.ping_sent_at: float | None = None  # our PING waiting for its ACK
        # The keepalive clock starts over at each read, at our PING's ACK, and when a
        # keepalive time passed with no call to keep alive.
        self.waiting_since = -math.inf

    # -- the client's PINGs -----------------------------------------------------------------

    def ping_received(self, now: float, calls_open: bool) -> bool:
        """One PING from the client; True once it has used up its strikes."""
        idle = not calls_open and not self.permit_without_calls
        interval = IDLE_PING_INTERVAL_SECONDS if idle else self.interval_seconds
        too_soon = now < self.last_ping_at + interval
        self.last_ping_at = now
        if not too_soon:
            return False
        self.strikes += 1
        return 0 < self.max_strikes < self.strikes

    def reset_strikes(self) -> None:
        """The server sent HEADERS, DATA or WINDOW_UPDATE: the next PING is welcome."""
        self.strikes = 0
        self.last_ping_at = -math.inf

    # -- our keepalive PINGs ----------------------------------------------------------------

    def acked(self, payload: bytes, now: float) -> bool:
        """A PING ACK from the client; True when it answers our keepalive PING (the next
        check may then be due sooner than the timer armed for the ACK's deadline)."""
        if payload != KEEPALIVE_PAYLOAD or self.ping_sent_at is None:
            return False
        self.ping_sent_at = None
        self.waiting_since = now
        return True

    def next_check_at(self, read_at: float) -> float:
        """When check() has something to decide (math.inf: never)."""
        if not self.time_seconds:
            return math.inf
        sent = self.ping_sent_at
        if sent is None:
            return max(read_at, self.waiting_since) + self.time_seconds
        if read_at <= sent:
            return sent + self.timeout_seconds
        return sent + max(self.timeout_seconds, PING_ACK_TIMEOUT_SECONDS)

    def check(self, now: float, read_at: float, calls_open: bool) -> str:
        """What is due now: WAIT, SEND_PING (the caller writes it), or a failure."""
        if now + TIMER_SLACK_SECONDS < self.next_check_at(read_at):
            return WAIT
        sent = self.ping_sent_at
        if sent is not None:
            return KEEPALIVE_TIMEOUT if read_at <= sent else PING_TIMEOUT
        if calls_open or self.permit_without_calls:
            self.ping_sent_at = now
            return SEND_PING
        self.waiting_since = now  # no call to keep alive: look again a keepalive time later
        return WAIT

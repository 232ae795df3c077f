"""The RFC 9293 connection state machine, as one table.

The slow path owns the state name of every connection; the fast path owns
the byte positions and sets flags (FIN received, FIN acknowledged) that
reach the slow path as events.  Every transition the stack may take is a
row below; anything else raises :class:`TcpProtocolError` instead of
silently doing something.  Handshake states (SYN_SENT, SYN_RECEIVED) are
left by installing the flow (-> ESTABLISHED) or by failing, which the
engine does explicitly.
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"
    CLOSED = "CLOSED"

    # members are singletons: hash by identity (Enum's own __hash__ is a
    # Python function, called for every table lookup and set test below)
    __hash__ = object.__hash__


class Event(enum.Enum):
    ESTABLISH = "establish"          # handshake completed
    APP_SHUTDOWN = "app-shutdown"    # the app closed its send side: FIN queued
    FIN_RCVD = "fin-received"        # in-order FIN from the peer
    FIN_ACKED = "fin-acked"          # the peer acknowledged our FIN
    RST = "reset"                    # reset received or sent
    TIMEOUT = "timeout"              # handshake or retransmission gave up

    __hash__ = object.__hash__


class TcpProtocolError(Exception):
    """An event arrived in a state where RFC 9293 has no transition for it."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"no transition from {state.value} on {event.value}")
        self.state = state
        self.event = event


S, E = State, Event
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.SYN_SENT, E.ESTABLISH): S.ESTABLISHED,
    (S.SYN_RECEIVED, E.ESTABLISH): S.ESTABLISHED,
    (S.ESTABLISHED, E.APP_SHUTDOWN): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.FIN_RCVD): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.FIN_ACKED): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.FIN_RCVD): S.CLOSING,
    (S.FIN_WAIT_1, E.APP_SHUTDOWN): S.FIN_WAIT_1,
    (S.FIN_WAIT_2, E.FIN_RCVD): S.TIME_WAIT,
    (S.FIN_WAIT_2, E.APP_SHUTDOWN): S.FIN_WAIT_2,
    (S.CLOSING, E.FIN_ACKED): S.TIME_WAIT,
    (S.CLOSING, E.APP_SHUTDOWN): S.CLOSING,
    (S.CLOSE_WAIT, E.APP_SHUTDOWN): S.LAST_ACK,
    (S.LAST_ACK, E.FIN_ACKED): S.CLOSED,
    (S.LAST_ACK, E.APP_SHUTDOWN): S.LAST_ACK,
    (S.TIME_WAIT, E.APP_SHUTDOWN): S.TIME_WAIT,
    (S.CLOSED, E.APP_SHUTDOWN): S.CLOSED,
}
# A reset or a timeout ends every state.
for _s in State:
    TRANSITIONS[(_s, E.RST)] = S.CLOSED
    TRANSITIONS[(_s, E.TIMEOUT)] = S.CLOSED

# States in which the peer may still send us data / we may still send.
RX_OPEN = {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2}
SYNCHRONIZED = {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT}
# After our FIN was queued and before the connection is gone: the states the
# engine's closing sync looks at (lost FIN events, orphans whose peer went silent).
CLOSING_STATES = frozenset({S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK})


def transition(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise TcpProtocolError(state, event) from None

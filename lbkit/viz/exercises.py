"""Checkers for the algorithms chapter's exercises.

Each ``check_*`` returns a :class:`Verdict`: true when the answer is right,
shown (and ``str``-ed) as ``correct`` or as a hint that never gives the answer
away. A notebook cell that ends with the call displays it; ``print`` works
too. The truth is computed from lbkit itself where it can be, so the
exercises cannot drift from the code they teach.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from lbkit.algorithms import Backend, make_balancer

#: Exercise 2's choices: what breaks stickiness that hashes the client address.
STICKY_CHOICES: dict[str, str] = {
    "a": "the user opens the site in a second browser tab",
    "b": "the user's IP address changes (phone hops from Wi-Fi to 4G), or the pool changes size",
    "c": "the backend the user sits on gets slower",
    "d": "the browser switches from HTTP/1.1 to HTTP/2",
}
_STICKY_RIGHT = "b"
_HASHES_CLIENT = ("ip_hash", "ring_hash", "maglev")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a check: ``bool(v)`` says if the answer was right."""

    ok: bool
    message: str

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        return self.message

    __repr__ = __str__


def _say(ok: bool, hint: str) -> Verdict:
    return Verdict(ok, "correct" if ok else f"not yet: {hint}")


def check_letter_answers(
    answer: Mapping[str, object] | None,
    truth: Mapping[str, str],
    words: Mapping[str, str],
    *,
    what: str,
    how: str,
    wrong_hint: str,
    before_counting: Callable[[dict[str, str]], str | None] | None = None,
) -> Verdict:
    """The checker of a "give each letter a word" exercise.

    ``truth`` maps each letter to the right word; ``words`` maps every accepted
    spelling (lower case) to the word it means. ``what`` names the items
    ("situation", "request"), ``how`` says what to answer ("'L4' or 'L7'").
    The hints come in order: nothing given, letters missing, letters unknown,
    spellings not accepted, then ``before_counting(words given)`` (a hint for
    a typical slip, or None), then how many are wrong with ``wrong_hint``.
    """
    if not answer:
        return _say(False, f"map every letter to {how}, e.g. {{'a': ..., 'b': ...}}")
    given = {str(k).strip().lower().strip("()"): str(v).strip().lower() for k, v in answer.items()}
    missing = sorted(set(truth) - set(given))
    if missing:
        return _say(False, f"answer every {what}; missing: {', '.join(missing)}")
    unknown = sorted(set(given) - set(truth))
    if unknown:
        return _say(False, f"{', '.join(unknown)}: not a {what} (letters a to {max(truth)})")
    bad = sorted(k for k, v in given.items() if v not in words)
    if bad:
        return _say(False, f"answer {how}; check {', '.join(bad)}")
    meant = {k: words[v] for k, v in given.items()}
    if before_counting is not None and (hint := before_counting(meant)):
        return _say(False, hint)
    wrong = sum(meant[k] != v for k, v in truth.items())
    if wrong:
        return _say(False, f"{wrong} not right yet. {wrong_hint}")
    return _say(True, "")


def wrr_truth(weights: Sequence[int] = (3, 1), n: int = 8) -> str:
    """The first ``n`` picks of smooth WRR over backends a, b, ... with ``weights``."""
    names = "abcdefghij"[: len(weights)]
    lb = make_balancer(
        "weighted_round_robin",
        [Backend(nm, weight=w) for nm, w in zip(names, weights, strict=True)],
    )
    return "".join(lb.pick().name for _ in range(n))


def check_wrr_sequence(answer: str | Sequence[str] | None) -> Verdict:
    """Exercise 1: the first 8 picks of smooth WRR for a (weight 3) and b (weight 1)."""
    if answer is None:
        return _say(False, "write the 8 picks as a string such as 'abababab'")
    text = "".join(answer).lower()
    picks = "".join(ch for ch in text if ch in "ab")
    truth = wrr_truth()
    if picks == truth:
        return _say(True, "")
    if len(picks) != len(truth):
        return _say(False, f"give exactly {len(truth)} picks, each 'a' or 'b'")
    if picks == "aaabaaab":
        return _say(False, "that is IPVS's bursty order; nginx adds each weight and subtracts 4")
    return _say(False, "run the counters: add 3 to a and 1 to b, the larger wins, subtract 4")


def sticky_choices() -> None:
    """Print exercise 2's choices."""
    for letter, text in STICKY_CHOICES.items():
        print(f"({letter}) {text}")


def check_sticky(algorithm: str | None, breaks: str | None) -> Verdict:
    """Exercise 2: what keeps a user on one backend without cookies, and what breaks it."""
    algo = (algorithm or "").strip().lower().replace(" ", "_").replace("-", "_")
    if algo not in _HASHES_CLIENT:
        return _say(False, "which algorithm decides from the client's address alone?")
    letter = (breaks or "").strip().lower().strip("()")
    if letter not in STICKY_CHOICES:
        return _say(False, f"pick one letter of {', '.join(STICKY_CHOICES)}")
    if letter != _STICKY_RIGHT:
        return _say(False, "what is the one input the hash depends on, and when can it change?")
    return _say(True, "")


def _as_fraction(answer: float | str) -> float:
    if isinstance(answer, str):
        text = answer.strip().rstrip("%")
        value = float(Fraction(text))
        return value / 100 if answer.strip().endswith("%") else value
    return float(answer)


def check_ring_fraction(answer: float | str | None) -> Verdict:
    """Exercise 3: the fraction of keys that move when 1 of 5 ring backends leaves."""
    if answer is None:
        return _say(False, "give a number such as 0.5, '1/2' or '50%'")
    try:
        value = _as_fraction(answer)
    except (ValueError, ZeroDivisionError):
        return _say(False, "give a number such as 0.5, '1/2' or '50%'")
    if abs(value - 1 / 5) <= 0.03:
        return _say(True, "")
    if value == 0:
        return _say(False, "the leaving backend's keys must go somewhere")
    if value > 0.5:
        return _say(False, "that is a reshuffle, as round robin does; a ring moves only some keys")
    return _say(False, "which keys lose their backend, and what share of keys did it own?")


# ------------------------------------------------ chapter 1: the lab tour

#: Chapter 1's exercise: fields of an HTTP request packet, as ``letter: (text, layer, field)``.
L4_FIELD_CHOICES: dict[str, tuple[str, str, str]] = {
    "a": ("the client's IP address", "IP", "src"),
    "b": ("the URL path (/api/v1/cart)", "HTTP", "request line"),
    "c": ("the destination port (80)", "TCP", "dport"),
    "d": ("the Host header", "HTTP", "Host"),
    "e": ("the TCP flags (is this a SYN?)", "TCP", "flags"),
    "f": ("the session cookie", "HTTP", "Cookie"),
    "g": ("the client's port", "TCP", "sport"),
    "h": ("the User-Agent header (is it a phone?)", "HTTP", "User-Agent"),
    "i": ("the destination IP address", "IP", "dst"),
}


def l4_field_choices() -> None:
    """Print chapter 1's choices: which of these can an L4 balancer decide on?"""
    for letter, (text, _layer, _field) in L4_FIELD_CHOICES.items():
        print(f"({letter}) {text}")


def l4_field_truth(pkt=None) -> str:
    """The letters of :data:`L4_FIELD_CHOICES` that are ``l4_visible`` in ``pkt``'s layer rows.

    ``pkt`` defaults to :func:`lbkit.viz.packets.example_http_packet`; a
    choice the packet does not carry (no Cookie header) is not L4-visible.
    """
    from .packets import example_http_packet, layer_rows

    rows = layer_rows(pkt if pkt is not None else example_http_packet())
    visible = {(r["layer"], r["field"]) for r in rows if r["l4_visible"]}
    return "".join(
        letter
        for letter, (_t, layer, field) in L4_FIELD_CHOICES.items()
        if (layer, field) in visible
    )


def check_l4_fields(answer: str | Sequence[str] | None, pkt=None) -> Verdict:
    """Chapter 1: the letters of every field an L4 balancer can decide on (truth from ``pkt``)."""
    if not answer:
        return _say(False, "give the letters of your choices, such as 'ab'")
    text = "".join(answer).lower()
    letters = {ch for ch in text if ch.isalpha()}
    unknown = sorted(letters - set(L4_FIELD_CHOICES))
    if unknown:
        verb = "is not a choice" if len(unknown) == 1 else "are not choices"
        return _say(False, f"{', '.join(unknown)} {verb}: pick letters a to i")
    truth = set(l4_field_truth(pkt))
    if letters - truth:
        return _say(
            False,
            "at least one of your letters lives in the bytes after the TCP header, "
            "which an L4 box forwards without reading",
        )
    if missing := len(truth - letters):
        return _say(
            False,
            f"an L4 box can use {missing} more: which header fields name a connection "
            "(both ends of it), and which one marks a new connection?",
        )
    return _say(True, "")


# ------------------------------------------------ chapter 2: L4, packets not requests

#: Chapter 2's interview drill: each situation, and the layer that serves it (NLB is L4, ALB L7).
L4_OR_L7_SITUATIONS: dict[str, tuple[str, str]] = {
    "a": ("a multiplayer game's UDP traffic, a million players at once", "L4"),
    "b": ("send /api/v2/* to the new service and everything else to the old one", "L7"),
    "c": ("one address in front of PostgreSQL read replicas (raw TCP, not HTTP)", "L4"),
    "d": ("phones to the mobile pool, told apart by their User-Agent", "L7"),
    "e": ("TLS must end on the backends: the balancer may not hold the private key", "L4"),
    "f": ("a request that got a 502 is retried on another backend", "L7"),
    "g": ("backends must see each client's own IP as the packets' source address", "L4"),
    "h": ("a logged-in user stays on one backend, by a session cookie", "L7"),
}
_LAYER_WORDS = {"l4": "L4", "4": "L4", "nlb": "L4", "l7": "L7", "7": "L7", "alb": "L7"}


def l4_or_l7_choices() -> None:
    """Print chapter 2's situations: L4 (an NLB) or L7 (an ALB)?"""
    for letter, (text, _layer) in L4_OR_L7_SITUATIONS.items():
        print(f"({letter}) {text}")


def check_l4_or_l7(answer: dict[str, str] | None) -> Verdict:
    """Chapter 2: ``{"a": "L4", "b": "L7", ...}`` for every situation (NLB/ALB accepted too)."""
    truth = {k: layer for k, (_text, layer) in L4_OR_L7_SITUATIONS.items()}
    return check_letter_answers(
        answer,
        truth,
        _LAYER_WORDS,
        what="situation",
        how="'L4' or 'L7' (or 'NLB', 'ALB')",
        wrong_hint="For each, ask: must the balancer read something after the TCP or UDP "
        "header (a path, a header, a cookie, a status code)? Then only L7 can. Is it not HTTP "
        "at all, or must the bytes reach the backend as the client sent them? Then L4.",
    )

"""MQTT topic names and filters (``+`` one level, ``#`` the rest), shared by every transport."""

from __future__ import annotations


class TopicError(ValueError):
    """A topic name or filter that MQTT would reject."""


def validate_topic(topic: str) -> str:
    """A topic one can publish to: non-empty text without wildcards or NUL."""
    if not isinstance(topic, str) or not topic:
        raise TopicError(f"topic must be a non-empty string, got {topic!r}")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise TopicError(f"cannot publish to {topic!r}: wildcards and NUL are not allowed")
    return topic


def validate_filter(topic_filter: str) -> str:
    """A subscription filter: ``+`` fills a whole level, ``#`` only as the whole last level."""
    if not isinstance(topic_filter, str) or not topic_filter or "\0" in topic_filter:
        raise TopicError(f"topic filter must be a non-empty string, got {topic_filter!r}")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise TopicError(f"bad filter {topic_filter!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise TopicError(f"bad filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True if ``topic`` matches ``topic_filter`` (topics starting with '$' skip wildcards)."""
    if topic_filter == topic:
        return True
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels) or (f != "+" and f != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)

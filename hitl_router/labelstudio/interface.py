"""The labelling configs the bridge gives the projects it creates.

Classes are ``<Choice>`` values with an alias ``c<index>``: an annotation's result holds
the alias, so labels come back as class indices whatever the class names are (Label
Studio reads a ``$``-prefixed value as a data reference, and does not check a result's
choices against the config). Review projects also ask why the model was wrong, from the
correction taxonomy, with an optional note; eval projects ask only for the class.

>>> xml = label_config(["cat", 'say "hi"'], ["model_correct", "bad_input"])
>>> classes_of(xml)
('cat', 'say "hi"')
>>> 'alias="c1"' in xml, 'name="correction_reason"' in xml
(True, True)
>>> classes_of(label_config(["0", "1"], None)), "correction" in label_config(["0", "1"], None)
(('0', '1'), False)
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from xml.sax.saxutils import quoteattr

#: the control holding the class, the one holding the correction reason, the note's
LABEL, REASON, NOTE = "label", "correction_reason", "correction_note"
#: the object the controls label: the item rendered as text
ITEM = "item"


def alias(index: int) -> str:
    return f"c{index}"


def alias_index(value: str) -> int | None:
    """The class index an alias stands for (None if ``value`` is not an alias).

    >>> alias_index("c12"), alias_index("cat"), alias_index("c-1")
    (12, None, None)
    """
    if value.startswith("c") and value[1:].isdigit():
        return int(value[1:])
    return None


def label_config(classes: Sequence[str], reasons: Sequence[str] | None) -> str:
    """The labelling config for items of ``classes``; ``reasons`` (the correction
    taxonomy) adds the correction reason and note, None leaves them out (eval)."""
    choices = "".join(
        f"\n    <Choice value={quoteattr(c)} alias={quoteattr(alias(i))}/>"
        for i, c in enumerate(classes)
    )
    parts = [
        "<View>",
        '  <Header value="$header"/>',
        f'  <Text name="{ITEM}" value="$text"/>',
        '  <Text name="why" value="$why"/>' if reasons is not None else "",
        f'  <Choices name="{LABEL}" toName="{ITEM}" choice="single-radio" required="true" '
        f'showInline="true">{choices}\n  </Choices>',
    ]
    if reasons is not None:
        why = "".join(f"\n    <Choice value={quoteattr(r)}/>" for r in reasons)
        parts += [
            '  <Header value="Why was the model wrong? (model_correct if it was right)"/>',
            f'  <Choices name="{REASON}" toName="{ITEM}" choice="single">{why}\n  </Choices>',
            f'  <TextArea name="{NOTE}" toName="{ITEM}" placeholder="note (optional)" '
            'maxSubmissions="1" editable="true"/>',
        ]
    parts.append("</View>")
    return "\n".join(p for p in parts if p)


def classes_of(config: str) -> tuple[str, ...] | None:
    """The classes of a labelling config the bridge made, in index order (None when it
    has no ``label`` choices with the bridge's aliases: not one of ours)."""
    try:
        root = ET.fromstring(config)
    except ET.ParseError:
        return None
    for node in root.iter("Choices"):
        if node.get("name") != LABEL:
            continue
        found: dict[int, str] = {}
        for choice in node.iter("Choice"):
            index = alias_index(choice.get("alias") or "")
            if index is None or choice.get("value") is None:
                return None
            found[index] = choice.get("value") or ""
        if sorted(found) != list(range(len(found))) or not found:
            return None
        return tuple(found[i] for i in range(len(found)))
    return None


def fingerprint(classes: Sequence[str]) -> str:
    """A short name for a class list (projects of one queue with other classes).

    >>> fingerprint(["a", "b"]) == fingerprint(["a", "b"]), len(fingerprint(["a"]))
    (True, 8)
    """
    return hashlib.sha256("\x1f".join(classes).encode()).hexdigest()[:8]

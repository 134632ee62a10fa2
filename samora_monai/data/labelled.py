"""Labelled items for evaluation, from datalists whose test items may have no labels (MSD/decathlon ``testing``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from monai.utils import ensure_tuple

__all__ = ["labelled_items"]

logger = logging.getLogger(__name__)


def labelled_items(
    datalist: Mapping[str, Sequence[Mapping]],
    sections: str | Sequence[str] = ("testing", "validation"),
    keys: Sequence[str] = ("image", "label"),
) -> list[dict]:
    """The items of the first of ``sections`` that has labelled items, reduced to ``keys``.

    Items lacking one of ``keys`` (a decathlon ``testing`` section lists images only) are skipped with one log line
    per section. Raises ``ValueError`` naming the searched sections when none has a labelled item.

    Args:
        datalist: ``{section: [items]}`` (e.g. ``load_datalist(...)``).
        sections: sections to search, in order of preference.
        keys: the fields an evaluation item needs; the returned items hold only these.
    """
    sections, keys = ensure_tuple(sections), ensure_tuple(keys)
    found = []
    for section in sections:
        items = list(datalist.get(section) or [])
        labelled = [{k: item[k] for k in keys} for item in items if all(item.get(k) for k in keys)]
        if len(labelled) < len(items):
            logger.info(
                f"datalist {section!r}: skipped {len(items) - len(labelled)} of {len(items)} items without "
                f"{' and '.join(map(repr, keys))}"
            )
        found.append(f"{section!r}: {len(labelled)} labelled of {len(items)}")
        if labelled:
            if section != sections[0]:
                logger.info(f"evaluating the {len(labelled)} labelled items of {section!r}")
            return labelled
    raise ValueError(
        f"no labelled items (with {' and '.join(map(repr, keys))}) in the datalist sections searched ("
        + "; ".join(found)
        + f"; sections present: {sorted(k for k in datalist if datalist[k])}); list the labelled test cases in one "
        "of these sections or set eval_sections to the section that holds them"
    )

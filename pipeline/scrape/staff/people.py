"""Who a staff person is, whatever page or render mode lists them: the identity rules of the staff rows.

A person's ``item_id`` never depends on the page that listed them (:func:`person_id`): the site's own ``data-id``,
else a hash of the site and the person's profile URL, else of the site and the normalised name (:func:`normal_name`).

Roles are academic when they name an academic title (:data:`ACADEMIC_TITLES`), else when they contain none of the
``scrape.non_academic_roles`` keywords (:func:`is_academic`).
"""

from __future__ import annotations

import hashlib

# an academic title anywhere in a role makes it academic before the non-academic keywords are looked at
# ("Professor Emeritus; Special Assistant to the Provost" is academic)
ACADEMIC_TITLES = (
    "professor", "lecturer", "reader in", "fellow", "researcher", "research associate", "research scientist",
    "postdoc", "post-doc", "scientist", "faculty", "dozent", "chair of", "phd candidate", "doctoral",
)  # fmt: skip


def is_academic(role: str | None, keywords: list[str], titles: tuple[str, ...] = ACADEMIC_TITLES) -> bool:
    """True when the role names an academic title; else False when it contains a non-academic keyword; else True."""
    r = (role or "").lower()
    if any(t in r for t in titles):
        return True
    return not any(k.lower() in r for k in keywords)


def normal_name(name: str | None) -> str:
    """``name`` case-folded with whitespace collapsed: the same person however a page spaces or capitalises them."""
    return " ".join((name or "").split()).casefold()


def person_id(
    site: str, name: str | None, given: str | None, profile_url: str | None = None, photo_url: str | None = None
) -> str:
    """A person's key on ``site``, independent of the page that lists them.

    The site's own id (``data-id``) when it gives one; else ``"h"`` + a hash of the site and the profile URL (without
    its fragment); else of the site and :func:`normal_name`; a card without a name: of its photo URL. Never the page
    URL: ``?page=2`` lists the same person.
    """
    if given:
        return str(given)
    if profile_url:
        key = f"{site}\nprofile\n{profile_url.split('#', 1)[0]}"
    elif not normal_name(name) and photo_url:
        key = f"{site}\nphoto\n{photo_url}"
    else:
        key = f"{site}\nname\n{normal_name(name)}"
    return "h" + hashlib.sha1(key.encode()).hexdigest()[:16]

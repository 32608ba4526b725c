"""What a correct crawl of a :class:`~pipeline.testing.mastodon_replay.MastodonSim` hashtag timeline stores."""

from __future__ import annotations

from pipeline.testing.mastodon_replay import MastodonSim


def mastodon_truth(sim: MastodonSim, only_media: bool = True) -> dict[str, tuple[str, str | None]]:
    """status id -> (status, reason) a correct crawl stores: with ``only_media`` the server never lists a post
    without media; without it (a server that ignores or rejects the option) such a post is ``skipped: no_image``."""
    out: dict[str, tuple[str, str | None]] = {}
    for s in sim.statuses:
        if s.media == "none":
            if not only_media:
                out[s.id] = ("skipped", "no_image")
            continue
        if s.media in ("gifv", "video", "audio"):
            out[s.id] = ("skipped", f"media_{s.media}")
        elif s.sensitive:
            out[s.id] = ("skipped", "sensitive")
        else:
            out[s.id] = ("ok", None)
    return out

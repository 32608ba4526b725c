"""Feeds: a hashtag's pages on one kind of site into posts, one adapter module per site kind.

:mod:`.base` (the adapter contract, its optional hooks, the post fields' readers), :mod:`.registry` (the adapters
by name), the adapters :mod:`.json` (``json`` and ``demo``) and :mod:`.mastodon`; what they share: :mod:`.followers`
(follower lookups of JSON feeds), :mod:`.fieldpath` (the field path language), :mod:`.cursors` (resumable,
incremental walks) and :mod:`.refresh` (young posts' counts read again).
"""

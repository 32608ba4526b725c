"""Feeds: a hashtag's pages on one kind of site into posts.

:mod:`.base` (the adapters and their registry), :mod:`.mastodon`, :mod:`.followers` (follower lookups of JSON
feeds), :mod:`.fieldpath` (the field path language), :mod:`.cursors` (resumable, incremental walks) and
:mod:`.refresh` (young posts' counts read again).
"""

"""The crawl's ground floor: the network. Nothing here knows a feed, a staff site or the crawl driver.

:mod:`.http` (the polite, defensive HTTP client), :mod:`.robots` (robots.txt), :mod:`.ratelimit` (per-host rate and
concurrency shared by every actor) and :mod:`.egress` (the browser's egress proxy, checked like the client).
"""

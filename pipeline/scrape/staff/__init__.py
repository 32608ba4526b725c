"""Staff directories: a university department's staff pages into people, static or rendered by Chromium.

:mod:`.browser` (Selenium), :mod:`.parse` (the one HTML reader of both render modes), :mod:`.site` (one site end to
end), :mod:`.htmltext`, :mod:`.placeholders` and :mod:`.check` (``scrape check-site``).
"""

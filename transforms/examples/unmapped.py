"""Unmapped fields, kept or dropped per pair.

`keep` (the default) copies every field no mapping names, both ways. `drop` copies only the
mapped fields: the partner is a projection of the original, and fields each side adds on its own
stay on that side.
"""

from transforms import Pair

kept = Pair(original="site.pages", partner="site.pages_v2", unmapped="keep")
kept.rename("title", "headline")

projection = Pair(original="site.pages", partner="site.page_titles", unmapped="drop")
projection.rename("title", "headline")
projection.rename("slug", "slug")

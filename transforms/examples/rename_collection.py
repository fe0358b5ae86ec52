"""Rename a collection: a pair with no field mappings; every field is copied both ways."""

from transforms import Pair

Pair(original="blog.post", partner="blog.posts")

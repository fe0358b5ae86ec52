"""Add a field to the new schema: optional (`nickname`) or required with a default (`loyalty`).

Old clients never see either field; documents created from the original get `loyalty: 0`.
"""

from transforms import Pair

users = Pair(original="app.users", partner="app.users_v2")
users.partner_only("nickname")  # optional: absent until a new client writes it
users.partner_only("loyalty", default=0)  # required: 0 when the document comes from the original

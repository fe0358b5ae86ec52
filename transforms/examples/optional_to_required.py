"""Make an optional field required: absent or null `tier` in the original is "basic" in the
partner. Going back, the partner's value is copied; a partner "basic" stays "basic" in the
original even where the original had no tier (the two cannot be told apart).

The reverse change, required to optional, needs no mapping: unmapped fields are copied as they
are, absent or not.
"""

from transforms import Pair

accounts = Pair(original="bank.accounts", partner="bank.accounts_v2")
accounts.require("tier", default="basic")

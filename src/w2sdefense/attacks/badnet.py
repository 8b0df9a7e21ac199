"""BadNet: rare-word tokens inserted into the text (Gu et al. 2017; Kurita et al. 2020 for NLP)."""

from w2sdefense.attacks.base import InsertionAttack, register_attack


@register_attack("badnet")
class BadNet(InsertionAttack):
    """Inserts rare words; the paper uses "mn" (Kurita et al.'s list: cf, mn, bb, tq, mb)."""

    default_triggers = ("mn",)
